from twisted.application.service import ServiceMaker

realtimed = ServiceMaker(
    "realtimed",
    "realtimed.tap",
    "Realtime messaging for PostgreSQL-backed applications (Socket.IO, REST, webhooks)",
    "realtimed",
)
