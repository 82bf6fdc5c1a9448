// Not a contestant: the cheapest server that answers the load generator, used
// to find the load generator's own ceiling (`bench/run.py --servers ceiling`).
//
// It speaks only what loadgen.js sends (WebSocket with its own frame parser,
// Engine.IO open, Socket.IO CONNECT, REALTIME_SUBSCRIBE and REALTIME_PUBLISH
// with acks), accepts any token, frames each broadcast once and writes every
// connection's held frames together once per event-loop turn.  A figure the
// load generator reaches against this server is a bound on what it can
// measure of any other.
//
// Usage: node ceiling_server.js PORT   (listens on 127.0.0.1 only)

"use strict";

const net = require("net");
const crypto = require("crypto");

const port = Number(process.argv[2] || 0);
const rooms = new Map(); // channel -> Set of sockets
const held = new Set(); // sockets with frames to write
let flushScheduled = false;

function frame(text) {
  const payload = Buffer.from(text);
  const n = payload.length;
  let header;
  if (n < 126) header = Buffer.from([0x81, n]);
  else if (n < 65536) header = Buffer.from([0x81, 126, n >> 8, n & 0xff]);
  else {
    header = Buffer.alloc(10);
    header[0] = 0x81;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([header, payload]);
}

function flush() {
  flushScheduled = false;
  for (const socket of held) {
    socket.cork();
    for (const bytes of socket.held) socket.write(bytes);
    socket.held = [];
    socket.uncork();
  }
  held.clear();
}

function hold(socket, bytes) {
  socket.held.push(bytes);
  held.add(socket);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
}

function onText(socket, text) {
  if (text.startsWith("40")) {
    socket.write(frame('40{"sid":"' + crypto.randomUUID() + '"}'));
    return;
  }
  if (text === "3" || !text.startsWith("42")) return;
  const m = /^42(\d*)(.*)$/s.exec(text);
  const id = m[1];
  const [event, data] = JSON.parse(m[2]);
  if (event === "REALTIME_SUBSCRIBE") {
    if (!rooms.has(data.channel)) rooms.set(data.channel, new Set());
    rooms.get(data.channel).add(socket);
    socket.write(frame(`43${id}[${JSON.stringify({ ok: true, channel: data.channel })}]`));
  } else if (event === "REALTIME_PUBLISH") {
    const messageId = crypto.randomUUID();
    const bytes = frame(
      "42" +
        JSON.stringify([
          data.event,
          {
            channel: data.channel,
            event: data.event,
            messageId,
            senderType: "user",
            senderId: null,
            payload: data.payload,
            createdAt: new Date().toISOString(),
          },
        ])
    );
    for (const member of rooms.get(data.channel) || []) hold(member, bytes);
    socket.write(frame(`43${id}[${JSON.stringify({ ok: true, channel: data.channel, messageId })}]`));
  }
}

const server = net.createServer((socket) => {
  socket.held = [];
  socket.setNoDelay(true);
  let upgraded = false;
  let buf = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    if (!upgraded) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.toString("latin1", 0, end + 2);
      if (!/^Upgrade: *websocket/im.test(head)) {
        // The harness's readiness probe, an Engine.IO polling handshake.
        const body = '0{"sid":"probe","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000}';
        socket.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
        return;
      }
      const key = /Sec-WebSocket-Key: *(.*)\r\n/i.exec(head);
      const accept = crypto
        .createHash("sha1")
        .update((key ? key[1].trim() : "") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        .digest("base64");
      socket.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${accept}\r\n\r\n`
      );
      socket.write(
        frame('0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}')
      );
      buf = buf.subarray(end + 4);
      upgraded = true;
    }
    while (buf.length >= 2) {
      let len = buf[1] & 0x7f;
      let hdr = 2;
      if (len === 126) {
        if (buf.length < 4) break;
        len = buf.readUInt16BE(2);
        hdr = 4;
      } else if (len === 127) {
        if (buf.length < 10) break;
        len = Number(buf.readBigUInt64BE(2));
        hdr = 10;
      }
      const masked = (buf[1] & 0x80) !== 0;
      const start = hdr + (masked ? 4 : 0);
      if (buf.length < start + len) break;
      const payload = Buffer.from(buf.subarray(start, start + len));
      if (masked) {
        for (let i = 0; i < payload.length; i++) payload[i] ^= buf[hdr + (i & 3)];
      }
      const opcode = buf[0] & 0x0f;
      buf = buf.subarray(start + len);
      if (opcode === 1) onText(socket, payload.toString());
      else if (opcode === 8) socket.end();
    }
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    held.delete(socket);
    for (const members of rooms.values()) members.delete(socket);
  });
});

server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening on 127.0.0.1:${server.address().port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
