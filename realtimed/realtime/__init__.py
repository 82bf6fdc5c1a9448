"""
Realtime channels over Socket.IO: who may subscribe and publish, what a
socket is subscribed to, who is present, and delivery of stored messages to
this process's sockets.

- `realtimed.realtime.channels`: channel names and patterns (pure);
- `realtimed.realtime.messages`: the rules every published message obeys,
  whoever sends it (pure);
- `realtimed.realtime.client_events`: what clients send and are answered
  (pure);
- `realtimed.realtime.subscriptions` and `realtimed.realtime.presence`:
  this process's subscriptions and members (pure);
- `realtimed.realtime.service`: `Realtime`, the handlers on the Socket.IO
  namespace.
"""
