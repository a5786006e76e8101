"""The customer dashboard: email sign-in links, usage bars, API keys and plans pages,
served by the gateway's own app from Jinja2 templates.
"""
