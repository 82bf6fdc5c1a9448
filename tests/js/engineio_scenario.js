// One end-to-end run of socket.io-client 4 against the test app of
// tests/test_socketio_e2e.py.
//
//   node engineio_scenario.js URL [websocket]
//
// With "websocket" the client uses only that transport; otherwise it starts
// on long-polling and upgrades (the default).  Each step prints one JSON
// line {"step": ..., "value": ...}; the test compares them with what it
// expects.  Any failure prints {"error": ...} and exits non-zero.
'use strict';

const { io } = require('socket.io-client');

const url = process.argv[2];
const websocketOnly = process.argv[3] === 'websocket';

function report(step, value) {
  process.stdout.write(JSON.stringify({ step, value }) + '\n');
}

function options(extra) {
  const base = { forceNew: true, reconnection: false, timeout: 10000 };
  if (websocketOnly) {
    base.transports = ['websocket'];
  }
  return Object.assign(base, extra);
}

function once(socket, event) {
  return new Promise((resolve) => socket.once(event, (...args) => resolve(args)));
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out waiting for ' + what)), 10000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// emit with an ack callback; resolves with all of the ack's arguments
function request(socket, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(10000).emit(...args, (error, ...values) => (error ? reject(error) : resolve(values)));
  });
}

function hex(value) {
  return Buffer.from(value).toString('hex');
}

async function main() {
  const socket = io(url, options({ auth: { token: 'good' } }));
  const [welcome] = await withTimeout(once(socket, 'welcome'), 'welcome');
  report('welcome', welcome);

  if (!websocketOnly) {
    if (socket.io.engine.transport.name !== 'websocket') {
      await withTimeout(once(socket.io.engine, 'upgrade'), 'upgrade');
    }
  }
  report('transport', socket.io.engine.transport.name);

  const acked = await withTimeout(request(socket, 'echo', 1, 'two', { three: [true] }), 'echo ack');
  report('ack', acked);

  const echoed = once(socket, 'echo');
  socket.emit('echo', 'no ack', Buffer.from([1, 2, 3]));
  const [text, binary] = await withTimeout(echoed, 'echo event');
  report('binary event', [text, hex(binary)]);

  const [binaryAck] = await withTimeout(request(socket, 'echo', Buffer.from([0, 255])), 'binary ack');
  report('binary ack', hex(binaryAck));

  socket.on('question', (n, file, ack) => ack(n * 2, Buffer.concat([Buffer.from(file), Buffer.from([9])])));
  const answered = once(socket, 'answer');
  socket.emit('ask me', 21);
  const [answer] = await withTimeout(answered, 'answer');
  report('client ack', [answer[0], hex(answer[1])]);

  const gone = once(socket, 'disconnect');
  socket.emit('bye');
  const [reason] = await withTimeout(gone, 'disconnect');
  report('server disconnect', reason);

  const back = once(socket, 'welcome');
  socket.connect();
  await withTimeout(back, 'welcome again');
  const [again] = await withTimeout(request(socket, 'echo', 'again'), 'echo after reconnect');
  report('reconnected', again);
  socket.close();

  // the server drops every connection; this client reconnects by itself
  const resilient = io(url, options({ auth: { token: 'good' }, reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 }));
  await withTimeout(once(resilient, 'welcome'), 'welcome before restart');
  const dropped = once(resilient, 'disconnect');
  const rejoined = once(resilient, 'welcome');
  resilient.emit('restart');
  const [dropReason] = await withTimeout(dropped, 'drop');
  await withTimeout(rejoined, 'automatic reconnect');
  const [afterRestart] = await withTimeout(request(resilient, 'echo', 'back'), 'echo after restart');
  report('automatic reconnect', [dropReason, afterRestart]);
  resilient.close();

  const refused = io(url, options({ auth: { token: 'bad' } }));
  const [error] = await withTimeout(once(refused, 'connect_error'), 'connect_error');
  report('refused', { message: error.message, data: error.data });
  refused.close();
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stdout.write(JSON.stringify({ error: String(error && error.stack || error) }) + '\n');
    process.exit(1);
  }
);
