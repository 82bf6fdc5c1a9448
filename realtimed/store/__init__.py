"""
realtimed's PostgreSQL layer: migrations, a connection pool for queries, and
the LISTEN connection that brings every stored message to this process.
"""
