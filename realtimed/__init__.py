"""
realtimed: realtime messaging for PostgreSQL-backed applications.

Socket.IO clients subscribe to channels and publish; row changes of the
application's tables arrive as INSERT / UPDATE / DELETE events; an admin REST
API manages channels and reads history; every message is stored and
delivered, signed, to the channel's webhooks; PostgreSQL row-level security
decides who may subscribe and publish.
"""

__version__ = "0.1.0"
