"""The embedding cache: its records and store against a real Redis (test_records.py), and the
service with the cache on, real workers and models (the services start once for the package)."""
