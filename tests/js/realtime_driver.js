// Drives one socket.io-client socket for the realtime end-to-end tests.
//
// Reads commands, one JSON object a line, on stdin:
//   {"id": 1, "op": "connect", "url": ..., "auth": {...}, "headers": {...}, "transports": [...]}
//   {"id": 2, "op": "request", "event": ..., "data": ...}   emit with an ack callback
//   {"id": 3, "op": "send", "event": ..., "data": ...}      emit without one
//   {"id": 4, "op": "disconnect"}
//   {"id": 5, "op": "drop"}        close the connection under the socket
//   {"id": 6, "op": "upgraded"}    answers once the transport is WebSocket
// and writes, one JSON object a line, on stdout: the answer to each command
// ({"id": ..., ...}; a connect's says the transport it opened with),
// every event the socket receives ({"type": "event", "event": ..., "data":
// ..., with "offset" when the server sent one}) and its disconnection
// ({"type": "disconnect", "reason": ...}), in the order they happen.
// "withCredentials": true in a connect keeps cookies (a load balancer's
// stickiness cookie) as a browser does.  With "reconnect": true, the socket
// reconnects by itself, and each connection after the first is written as
// {"type": "connect", "sid": ..., "recovered": ...}.
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
  if (command.withCredentials) {
    options.withCredentials = true;
  }
  socket = io(command.url, options);
  // The transport the Engine.IO session opened with, before any upgrade.
  let opened = null;
  socket.io.on('open', () => {
    opened = socket.io.engine.transport.name;
  });
  let connected = false;
  socket.on('connect', () => {
    if (connected) {
      out({ type: 'connect', sid: socket.id, recovered: socket.recovered });
      return;
    }
    connected = true;
    out({ id: command.id, ok: true, sid: socket.id, transport: opened });
  });
  socket.on('disconnect', (reason) => out({ type: 'disconnect', reason }));
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
    case 'upgraded': {
      const engine = socket.io.engine;
      if (engine.transport.name === 'websocket') {
        out({ id: command.id, transport: 'websocket' });
      } else {
        engine.once('upgrade', (transport) => out({ id: command.id, transport: transport.name }));
      }
      break;
    }
    default:
      out({ id: command.id, error: 'unknown op ' + command.op });
  }
});

commands.on('close', () => {
  if (socket) socket.disconnect();
  process.exit(0);
});
