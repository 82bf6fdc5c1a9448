"""
The admin page served at ``/admin/``: a browser page, shipped in the package
with no build step, over the admin REST API and Socket.IO.  An operator signs
in with the API key, then manages channels, tails the messages of a channel
or pattern, sees presence, statistics with a chart, and recent webhook
failures.

- ``static/``: the page (HTML, CSS, ES modules) and, under ``vendor/``, the
  browser libraries it uses (see ``VENDORED.rst``);
- `realtimed.admin.files`: which files there are, and their headers (pure);
- `realtimed.admin.page`: the Twisted resource that serves them.
"""
