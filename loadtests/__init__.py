"""`make loadtest`: locust profiles of real fleets against a locally started stack."""
