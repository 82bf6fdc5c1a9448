// Drives one socket.io-client socket for the realtime end-to-end tests.
//
// Reads commands, one JSON object a line, on stdin:
//   {"id": 1, "op": "connect", "url": ..., "auth": {...}, "headers": {...}, "transports": [...]}
//   {"id": 2, "op": "request", "event": ..., "data": ...}   emit with an ack callback
//   {"id": 3, "op": "send", "event": ..., "data": ...}      emit without one
//   {"id": 4, "op": "disconnect"}
//   {"id": 5, "op": "drop"}      close the connection under the socket
// and writes, one JSON object a line, on stdout: the answer to each command
// ({"id": ..., ...}) and every event the socket receives
// ({"type": "event", "event": ..., "data": ...}, with "offset" when the
// server sent one), in the order they happen.  With "reconnect": true in
// connect, the socket reconnects by itself, and each connection after the
// first is written as {"type": "connect", "sid": ..., "recovered": ...}.
'use strict';

const readline = require('readline');
const { io } = require('socket.io-client');

let socket = null;

function out(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

function connect(command) {
  const options = {
    reconnection: !!command.reconnect,
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
    forceNew: true,
    timeout: 15000,
    transports: command.transports || ['polling', 'websocket'],
  };
  if (command.auth !== null && command.auth !== undefined) {
    options.auth = command.auth;
  }
  if (command.headers) {
    options.extraHeaders = command.headers;
  }
  socket = io(command.url, options);
  let connected = false;
  socket.on('connect', () => {
    if (connected) {
      out({ type: 'connect', sid: socket.id, recovered: socket.recovered });
      return;
    }
    connected = true;
    out({ id: command.id, ok: true, sid: socket.id });
  });
  socket.on('connect_error', (error) => out({ id: command.id, ok: false, message: error.message }));
  socket.onAny((event, ...args) => {
    if (args.length === 2 && typeof args[1] === 'string') {
      out({ type: 'event', event, data: args[0], offset: args[1] });
      return;
    }
    out({ type: 'event', event, data: args.length === 1 ? args[0] : args });
  });
}

const commands = readline.createInterface({ input: process.stdin });

commands.on('line', (line) => {
  const command = JSON.parse(line);
  switch (command.op) {
    case 'connect':
      connect(command);
      break;
    case 'request':
      socket.emit(command.event, command.data, (ack) => out({ id: command.id, ack }));
      break;
    case 'send':
      socket.emit(command.event, command.data);
      out({ id: command.id });
      break;
    case 'drop':
      socket.io.engine.close();
      out({ id: command.id });
      break;
    case 'disconnect':
      if (socket) socket.disconnect();
      out({ id: command.id });
      break;
    default:
      out({ id: command.id, error: 'unknown op ' + command.op });
  }
});

commands.on('close', () => {
  if (socket) socket.disconnect();
  process.exit(0);
});
