"""
realtimed's PostgreSQL layer: migrations, a connection pool for queries, and
the listener that brings every stored message to this process.
"""
