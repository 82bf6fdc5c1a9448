// The Node.js reference peer: a plain Socket.IO 4.8 server doing the same job
// as realtimed's channels, minus storage and row-level security.
//
//   REALTIME_SUBSCRIBE {channel}               -> join the room, ack {ok, channel}
//   REALTIME_PUBLISH   {channel, event, payload} -> emit `event` to the room with
//       {channel, event, messageId, senderType, senderId, payload, createdAt},
//       ack {ok, channel, messageId}
//
// Clients authenticate with CONNECT auth {token: <HS256 JWT>}; the token is
// checked against BENCH_JWT_SECRET, as realtimed checks it.
//
// Usage: node node_server.js PORT   (listens on 127.0.0.1 only)

"use strict";

const http = require("http");
const crypto = require("crypto");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 0);
const secret = process.env.BENCH_JWT_SECRET || "";
const CHANNEL = /^[A-Za-z0-9_\-:.@]{1,255}$/;

function verifyToken(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const expected = crypto
    .createHmac("sha256", secret)
    .update(parts[0] + "." + parts[1])
    .digest("base64url");
  const given = Buffer.from(parts[2]);
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, Buffer.from(expected))) {
    return null;
  }
  try {
    const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    if (header.alg !== "HS256") return null;
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
    if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) return null;
    return claims;
  } catch (e) {
    return null;
  }
}

function failure(channel, code, message) {
  return { ok: false, channel, error: { code, message } };
}

const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });

io.use((socket, next) => {
  const claims = verifyToken((socket.handshake.auth || {}).token);
  if (claims === null) {
    next(new Error("Invalid token"));
    return;
  }
  socket.data.sub = claims.sub === undefined ? null : String(claims.sub);
  next();
});

io.on("connection", (socket) => {
  socket.on("REALTIME_SUBSCRIBE", (data, ack) => {
    const channel = data && data.channel;
    const reply = typeof ack === "function" ? ack : () => {};
    if (typeof channel !== "string" || !CHANNEL.test(channel)) {
      reply(failure(channel, "INVALID_INPUT", "channel: Invalid channel name"));
      return;
    }
    socket.join(channel);
    reply({ ok: true, channel });
  });

  socket.on("REALTIME_PUBLISH", (data, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    const channel = data && data.channel;
    const event = data && data.event;
    if (typeof channel !== "string" || typeof event !== "string" || event.length === 0) {
      reply(failure(channel, "INVALID_INPUT", "Invalid publish"));
      return;
    }
    if (!socket.rooms.has(channel)) {
      reply(failure(channel, "REALTIME_NOT_SUBSCRIBED", "Not subscribed"));
      return;
    }
    const messageId = crypto.randomUUID();
    io.to(channel).emit(event, {
      channel,
      event,
      messageId,
      senderType: "user",
      senderId: socket.data.sub,
      payload: data.payload === undefined ? {} : data.payload,
      createdAt: new Date().toISOString(),
    });
    reply({ ok: true, channel, messageId });
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening on 127.0.0.1:${httpServer.address().port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
