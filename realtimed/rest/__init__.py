"""
The admin REST API under ``/api/realtime/``: `realtimed.rest.api` (the Klein
application), `realtimed.rest.validation` (what requests may hold, pure) and
`realtimed.rest.openapi` (the OpenAPI document it serves).
"""
