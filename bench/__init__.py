"""`make bench`: the gateway measured against direct, bare and nginx baselines."""
