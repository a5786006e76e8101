"""The operator web console under ``/admin/console``: server-rendered pages and forms."""
