// Load generator for the realtimed benchmarks.
//
// One Node.js process holding many client connections over raw TCP, speaking
// just enough WebSocket (RFC 6455), Engine.IO v4 and Socket.IO v5 to
// authenticate, subscribe, publish and count deliveries.  Per delivered
// message it looks at a few bytes (is this the benchmark's event?) and, on the
// connections that measure latency, finds one number in the frame; nothing is
// JSON-parsed on the hot path.  Frames it sends are masked with a zero key,
// so masking costs nothing.
//
// Usage: node loadgen.js '<json config>'
//   stdout: one JSON object per line: {"type":"phase",...} while running
//           ({"type":"interval",...} every few seconds in the soak) and
//           {"type":"result",...} at the end; stderr: progress for people.
//
// Timestamps: every timestamp is wall-clock milliseconds from one monotonic
// source (performance.timeOrigin + performance.now()), so a timestamp put in
// a payload by this process, or by PostgreSQL's clock_timestamp(), can be
// compared with the time a delivery is read.

"use strict";

const net = require("net");
const fs = require("fs");
const path = require("path");
const { performance } = require("perf_hooks");

const config = JSON.parse(process.argv[2] || "{}");
const HOST = config.host || "127.0.0.1";
// Several realtimed processes of one database (scenario 7): connection i goes
// to ports[i % ports.length], and the server's CPU is the sum of theirs.
const PORTS = config.ports || [config.port];
const TOKEN = config.token;
const SERVER_PID = config.serverPid || 0;
const SERVER_PIDS = config.serverPids || [SERVER_PID];
const QUICK = !!config.quick;

function nowMs() {
  return performance.timeOrigin + performance.now();
}

function log(...args) {
  process.stderr.write(`[loadgen ${new Date().toISOString().slice(11, 19)}] ${args.join(" ")}\n`);
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// Measurements of the machine while a phase runs.

function readCpuTimes() {
  // Per-CPU busy and total jiffies from /proc/stat.
  const cpus = [];
  for (const line of fs.readFileSync("/proc/stat", "latin1").split("\n")) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const v = m[2].trim().split(/\s+/).map(Number);
    const idle = v[3] + (v[4] || 0);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    cpus.push({ busy: total - idle, total });
  }
  return cpus;
}

function serverTicks() {
  return SERVER_PIDS.reduce((sum, pid) => sum + readProcessTicks(pid), 0);
}

function readProcessTicks(pid) {
  if (!pid) return 0;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "latin1");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]); // utime + stime
  } catch (e) {
    return 0;
  }
}

function readRssKb(pid) {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "latin1"));
    return m ? Number(m[1]) : null;
  } catch (e) {
    return null;
  }
}

class CpuWindow {
  // CPU use over a window: the server process, this process, and each core.
  constructor() {
    this.t0 = nowMs();
    this.server0 = serverTicks();
    this.self0 = process.cpuUsage();
    this.cores0 = readCpuTimes();
  }
  finish() {
    const seconds = (nowMs() - this.t0) / 1000;
    const server = (serverTicks() - this.server0) / 100 / seconds;
    const self = process.cpuUsage(this.self0);
    const loadgen = (self.user + self.system) / 1e6 / seconds;
    const cores = readCpuTimes().map((c, i) => {
      const b = this.cores0[i];
      return b && c.total > b.total ? (c.busy - b.busy) / (c.total - b.total) : 0;
    });
    return {
      serverCpu: round(server, 2),
      loadgenCpu: round(loadgen, 2),
      coreBusy: cores.map((x) => round(x, 2)),
    };
  }
}

function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function latencySummary(samples) {
  const sorted = Float64Array.from(samples).sort();
  return {
    samples: sorted.length,
    p50: sorted.length ? round(percentile(sorted, 50), 2) : null,
    p99: sorted.length ? round(percentile(sorted, 99), 2) : null,
    max: sorted.length ? round(sorted[sorted.length - 1], 2) : null,
  };
}

// ---------------------------------------------------------------------------
// What every connection reports into.

const stats = {
  messages: 0, // every Engine.IO message received
  delivered: 0, // benchmark deliveries counted on every connection
  latencies: [], // ms, from connections that measure latency
  sentAt: [], // when each of those messages was published (ms)
  lastDelivery: 0,
  errors: 0, // realtime:error events and failed acks
  firstError: null,
  closedUnexpectedly: 0,
  churnDelivered: 0, // deliveries to short-lived connections (the soak's churn)
};

let deliveryPrefix = Buffer.from('42["m",');
let timestampKey = Buffer.from('"t":');
const ERROR_PREFIX = Buffer.from('42["realtime:error"');

function setDeliveryEvent(event, key) {
  deliveryPrefix = Buffer.from(`42[${JSON.stringify(event)},`);
  timestampKey = Buffer.from(JSON.stringify(key) + ":");
}

function noteError(message) {
  stats.errors += 1;
  if (stats.firstError === null) stats.firstError = message;
}

// ---------------------------------------------------------------------------
// WebSocket + Engine.IO + Socket.IO client connection.

const UPGRADE_REQUEST =
  `GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n` +
  `Host: ${HOST}:${PORTS[0]}\r\n` +
  `Upgrade: websocket\r\n` +
  `Connection: Upgrade\r\n` +
  `Sec-WebSocket-Key: YmVuY2htYXJrLWNsaWVudA==\r\n` +
  `Sec-WebSocket-Version: 13\r\n\r\n`;

const PONG_FRAME = frameText("3");
const LOCAL_ADDRESSES = 32;
const READ_BUFFER = Buffer.alloc(256 * 1024); // spread source addresses so ports never run out
let connectionCounter = 0;

function frameText(text) {
  // A masked text frame with a zero masking key (payload bytes unchanged).
  const payload = Buffer.from(text);
  const n = payload.length;
  let header;
  if (n < 126) {
    header = Buffer.from([0x81, 0x80 | n, 0, 0, 0, 0]);
  } else if (n < 65536) {
    header = Buffer.from([0x81, 0x80 | 126, n >> 8, n & 0xff, 0, 0, 0, 0]);
  } else {
    header = Buffer.alloc(14);
    header[0] = 0x81;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([header, payload]);
}

function frameControl(opcode, payload) {
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

class Connection {
  constructor() {
    this.index = connectionCounter++;
    this.socket = null;
    this.upgraded = false;
    this.pending = null; // bytes of an incomplete frame
    this.fragments = null;
    this.nextAckId = 0;
    this.acks = new Map();
    this.measureLatency = false;
    // A short-lived connection of the soak's churn: its deliveries are
    // counted apart, since it joins and leaves while messages flow.
    this.churn = false;
    this.received = 0; // deliveries to this connection
    this.open = false;
    this.closing = false;
    this._onConnected = null;
  }

  connect(timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.destroy();
        reject(new Error("connect timed out"));
      }, timeoutMs);
      this._onConnected = (err) => {
        clearTimeout(timer);
        this._onConnected = null;
        if (err) {
          this.destroy();
          reject(err);
        } else {
          resolve(this);
        }
      };
      const socket = net.connect({
        host: HOST,
        port: PORTS[this.index % PORTS.length],
        localAddress: `127.0.0.${2 + (this.index % LOCAL_ADDRESSES)}`,
        // Every read lands in one shared buffer (reads are handled one at a
        // time), so receiving allocates nothing.
        onread: {
          buffer: READ_BUFFER,
          callback: (nread, buf) => {
            this.onData(buf.subarray(0, nread));
            return true;
          },
        },
      });
      this.socket = socket;
      socket.setNoDelay(true);
      socket.on("connect", () => socket.write(UPGRADE_REQUEST));
      socket.on("error", (e) => this.fail(e));
      socket.on("close", () => {
        if (this.open && !this.closing) stats.closedUnexpectedly += 1;
        this.open = false;
        this.fail(new Error("connection closed"));
      });
    });
  }

  fail(err) {
    if (this._onConnected) this._onConnected(err);
    for (const [, pending] of this.acks) pending.reject(err);
    this.acks.clear();
  }

  destroy() {
    this.closing = true;
    if (this.socket) this.socket.destroy();
  }

  leave() {
    // A polite goodbye: Socket.IO DISCONNECT, a WebSocket close frame, then
    // the end of the TCP stream; destroyed after 5 s whatever the server does.
    if (!this.socket || this.closing) return;
    this.closing = true;
    const socket = this.socket;
    socket.write(frameText("41"));
    socket.write(frameControl(8, Buffer.from([0x03, 0xe8])));
    socket.end();
    setTimeout(() => socket.destroy(), 5000).unref();
  }

  send(text) {
    this.socket.write(frameText(text));
  }

  emit(event, data) {
    this.send("42" + JSON.stringify([event, data]));
  }

  request(event, data) {
    // Emit with an acknowledgement; resolves with the ack's first argument.
    const id = this.nextAckId++;
    return new Promise((resolve, reject) => {
      this.acks.set(id, { resolve, reject });
      this.send("42" + id + JSON.stringify([event, data]));
    });
  }

  async subscribe(channel) {
    const reply = await this.request("REALTIME_SUBSCRIBE", { channel });
    if (!reply || reply.ok !== true) {
      throw new Error(`subscribe ${channel} refused: ${JSON.stringify(reply)}`);
    }
  }

  onData(chunk) {
    // `chunk` may be the shared read buffer: whatever is kept is copied.
    let buf = chunk;
    if (!this.upgraded) {
      buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
      this.pending = null;
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) {
        this.pending = Buffer.from(buf);
        return;
      }
      const status = buf.toString("latin1", 0, buf.indexOf("\r\n"));
      if (!/^HTTP\/1\.1 101/.test(status)) {
        this.fail(new Error(`upgrade refused: ${status}`));
        this.destroy();
        return;
      }
      this.upgraded = true;
      buf = buf.subarray(end + 4);
      if (buf.length === 0) return;
    } else if (this.pending) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let off = 0;
    const n = buf.length;
    let now = 0;
    while (off + 2 <= n) {
      const b0 = buf[off];
      const b1 = buf[off + 1];
      let len = b1 & 0x7f;
      let hdr = 2;
      if (len === 126) {
        if (off + 4 > n) break;
        len = buf.readUInt16BE(off + 2);
        hdr = 4;
      } else if (len === 127) {
        if (off + 10 > n) break;
        len = Number(buf.readBigUInt64BE(off + 2));
        hdr = 10;
      }
      if (b1 & 0x80) hdr += 4;
      const start = off + hdr;
      const end = start + len;
      if (end > n) break;
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (opcode === 1 || opcode === 2 || opcode === 0) {
        if (!fin || this.fragments) {
          (this.fragments = this.fragments || []).push(Buffer.from(buf.subarray(start, end)));
          if (fin) {
            const whole = Buffer.concat(this.fragments);
            this.fragments = null;
            if (now === 0) now = nowMs();
            this.onMessage(whole, 0, whole.length, now);
          }
        } else {
          if (now === 0) now = nowMs();
          this.onMessage(buf, start, end, now);
        }
      } else if (opcode === 9) {
        this.socket.write(frameControl(10, buf.subarray(start, end)));
      } else if (opcode === 8) {
        this.closing = true;
        this.socket.end();
      }
      off = end;
    }
    if (off < n) this.pending = Buffer.from(buf.subarray(off));
  }

  onMessage(buf, start, end, now) {
    stats.messages += 1;
    const c0 = buf[start];
    if (c0 === 0x34 /* 4: message */) {
      const c1 = buf[start + 1];
      if (c1 === 0x32 /* 2: event */) {
        const plen = deliveryPrefix.length;
        if (end - start >= plen && buf.compare(deliveryPrefix, 0, plen, start, start + plen) === 0) {
          if (this.churn) {
            stats.churnDelivered += 1;
            return;
          }
          stats.delivered += 1;
          this.received += 1;
          stats.lastDelivery = now;
          if (this.measureLatency) {
            const at = buf.indexOf(timestampKey, start + plen);
            if (at >= 0 && at < end) {
              let j = at + timestampKey.length;
              const k = j;
              while (j < end) {
                const c = buf[j];
                if ((c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x65 || c === 0x2b) j++;
                else break;
              }
              const sentAt = Number(buf.toString("latin1", k, j));
              stats.latencies.push(now - sentAt);
              stats.sentAt.push(sentAt);
            }
          }
        } else if (
          end - start >= ERROR_PREFIX.length &&
          buf.compare(ERROR_PREFIX, 0, ERROR_PREFIX.length, start, start + ERROR_PREFIX.length) === 0
        ) {
          noteError(buf.toString("utf8", start, end));
        }
      } else if (c1 === 0x33 /* 3: ack */) {
        let j = start + 2;
        let id = 0;
        while (j < end && buf[j] >= 0x30 && buf[j] <= 0x39) id = id * 10 + (buf[j++] - 0x30);
        const pending = this.acks.get(id);
        if (pending) {
          this.acks.delete(id);
          let args;
          try {
            args = JSON.parse(buf.toString("utf8", j, end));
          } catch (e) {
            pending.reject(e);
            return;
          }
          pending.resolve(args[0]);
        }
      } else if (c1 === 0x30 /* 0: connect ok */) {
        this.open = true;
        if (this._onConnected) this._onConnected(null);
      } else if (c1 === 0x34 /* 4: connect error */) {
        if (this._onConnected) {
          this._onConnected(new Error(`connect refused: ${buf.toString("utf8", start + 2, end)}`));
        }
      } else if (c1 === 0x31 /* 1: disconnect */) {
        this.open = false;
      }
    } else if (c0 === 0x32 /* 2: ping */) {
      this.socket.write(PONG_FRAME);
    } else if (c0 === 0x30 /* 0: open */) {
      this.send("40" + JSON.stringify({ token: TOKEN }));
    } else if (c0 === 0x31 /* 1: close */) {
      this.closing = true;
      this.socket.end();
    }
  }
}

// ---------------------------------------------------------------------------
// Opening many connections.

async function openMany(count, concurrency, setup, { timeoutMs = 60000, onProgress } = {}) {
  // Open `count` connections, at most `concurrency` handshakes at a time; each
  // is connected, authenticated and passed to `setup(conn, i)`.  Returns the
  // connections and per-connection setup times (ms).
  const conns = new Array(count);
  const times = [];
  let next = 0;
  let failures = 0;
  let firstFailure = null;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const t0 = nowMs();
      const conn = new Connection();
      try {
        await conn.connect(timeoutMs);
        await setup(conn, i);
        conns[i] = conn;
        times.push(nowMs() - t0);
      } catch (e) {
        failures += 1;
        if (firstFailure === null) firstFailure = String(e.message || e);
        conn.destroy();
      }
      if (onProgress && (times.length + failures) % 1000 === 0) onProgress(times.length, failures);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  if (failures > 0) {
    log(`${failures} of ${count} connections failed; first: ${firstFailure}`);
  }
  if (failures > count * 0.01 || times.length === 0) {
    throw new Error(`${failures} of ${count} connections failed; first: ${firstFailure}`);
  }
  return { conns: conns.filter(Boolean), times, failures, firstFailure };
}

function closeAll(conns) {
  for (const c of conns) c.destroy();
}

// ---------------------------------------------------------------------------
// Publishing at a rate.

const PAYLOAD_BYTES = 100;

function publishFrameText(channel, event, ackId) {
  // A 100-byte payload: {"t":<timestamp ms, 3 decimals>,"p":"xxx..."}
  const t = nowMs().toFixed(3);
  const head = `{"t":${t},"p":"`;
  const pad = "x".repeat(Math.max(0, PAYLOAD_BYTES - head.length - 2));
  const payload = `${head}${pad}"}`;
  return `42${ackId}["REALTIME_PUBLISH",{"channel":${JSON.stringify(channel)},"event":"${event}","payload":${payload}}]`;
}

class Publisher {
  // Publishes through some connections, with acknowledgements, counting
  // how many succeeded and failed.
  constructor(targets) {
    this.targets = targets; // [{conn, channel}]
    this.next = 0;
    this.sent = 0;
    this.acked = 0;
    this.failed = 0;
    this.event = "m";
  }
  publishOne() {
    const target = this.targets[this.next];
    this.next = (this.next + 1) % this.targets.length;
    const conn = target.conn;
    const id = conn.nextAckId++;
    conn.acks.set(id, {
      resolve: (reply) => {
        if (reply && reply.ok === true) this.acked += 1;
        else {
          this.failed += 1;
          noteError(`publish refused: ${JSON.stringify(reply)}`);
        }
      },
      reject: () => {
        this.failed += 1;
      },
    });
    conn.socket.write(frameText(publishFrameText(target.channel, this.event, id)));
    this.sent += 1;
  }
  async run(rate, seconds) {
    // Open loop: publish `rate` messages per second for `seconds`.
    const t0 = nowMs();
    const total = Math.round(rate * seconds);
    let sent = 0;
    while (sent < total) {
      const due = Math.min(total, Math.floor(((nowMs() - t0) / 1000) * rate) + 1);
      while (sent < due) {
        this.publishOne();
        sent += 1;
      }
      await sleep(1);
    }
    return { sent, seconds: (nowMs() - t0) / 1000 };
  }
}

async function drain(quietMs, maxMs) {
  // Wait until no message has arrived for `quietMs`, at most `maxMs`.
  const t0 = nowMs();
  let last = stats.messages;
  let lastChange = nowMs();
  while (nowMs() - t0 < maxMs) {
    await sleep(50);
    if (stats.messages !== last) {
      last = stats.messages;
      lastChange = nowMs();
    } else if (nowMs() - lastChange >= quietMs) {
      return true;
    }
  }
  return false;
}

function resetCounters() {
  stats.delivered = 0;
  stats.latencies = [];
  stats.sentAt = [];
  stats.errors = 0;
  stats.firstError = null;
}

// A step is sustained when the server keeps up: every delivery arrives
// within GRACE_MS of the last publish, p99 stays under MAX_P99_MS, and the
// latency does not grow through the step (a backlog that builds up shows as
// messages published late in the step waiting longer than early ones).
const GRACE_MS = 1000;
const MAX_P99_MS = 1000;
const MAX_GROWTH_MS = 100;
let stepCounter = 0;

function median(values) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.floor(sorted.length / 2)];
}

function latencyGrowth(t0, t1) {
  // Median latency of messages published in the last quarter of [t0, t1]
  // minus that of the first quarter.
  const q = (t1 - t0) / 4;
  const first = [];
  const last = [];
  for (let i = 0; i < stats.sentAt.length; i++) {
    const t = stats.sentAt[i];
    if (t < t0 + q) first.push(stats.latencies[i]);
    else if (t >= t1 - q) last.push(stats.latencies[i]);
  }
  const a = median(first);
  const b = median(last);
  return a === null || b === null ? null : b - a;
}

async function runStep(publisher, recipients, rate, seconds) {
  await drain(200, 2000);
  // Each step publishes its own event name, so deliveries left over from an
  // earlier step are never counted in this one.
  stepCounter += 1;
  publisher.event = `m${stepCounter}`;
  setDeliveryEvent(publisher.event, "t");
  resetCounters();
  const acked0 = publisher.acked;
  const failed0 = publisher.failed;
  const cpu = new CpuWindow();
  const t0 = nowMs();
  const { sent, seconds: took } = await publisher.run(rate, seconds);
  const usage = cpu.finish();
  const expected = sent * recipients;
  const endedAt = nowMs();
  const deadline = endedAt + GRACE_MS;
  while (stats.delivered < expected && nowMs() < deadline) await sleep(10);
  const inTime = stats.delivered >= expected;
  const deliveredInTime = stats.delivered;
  // Let the server catch up before the next step: every publish answered
  // and every delivery of this step arrived, then a quiet moment.
  const settleDeadline = nowMs() + (QUICK ? 5000 : 20000);
  while (
    (publisher.acked + publisher.failed < publisher.sent || stats.delivered < expected) &&
    nowMs() < settleDeadline
  ) {
    await sleep(20);
  }
  const drained =
    publisher.acked + publisher.failed >= publisher.sent &&
    stats.delivered >= expected &&
    (await drain(200, Math.max(0, settleDeadline - nowMs()) + 200));
  const delivered = stats.delivered;
  const latency = latencySummary(stats.latencies);
  const growth = latencyGrowth(t0, endedAt);
  const failed = publisher.failed - failed0;
  const sustained =
    inTime &&
    failed === 0 &&
    latency.p99 !== null &&
    latency.p99 <= MAX_P99_MS &&
    growth !== null &&
    growth <= MAX_GROWTH_MS;
  const result = {
    rate,
    publishes: sent,
    acked: publisher.acked - acked0,
    failed,
    expected,
    delivered,
    deliveredInTime,
    deliveriesPerSecond: Math.round(delivered / took),
    latency,
    growth: growth === null ? null : round(growth, 1),
    sustained,
    drained,
    errors: stats.errors,
    firstError: stats.firstError,
    endedAt,
    ...usage,
  };
  log(
    `rate ${rate}/s: delivered ${deliveredInTime}/${expected} in time, p50 ${latency.p50} p99 ${latency.p99} ms ` +
      `growth ${growth === null ? null : Math.round(growth)} ms ` +
      `server cpu ${usage.serverCpu} loadgen cpu ${usage.loadgenCpu} -> ${sustained ? "sustained" : "behind"}`
  );
  out({ type: "step", ...result });
  return result;
}

async function findSustainedRate(publisher, recipients, startRate, { seconds, steps, maxRate }) {
  // Double the rate until a step falls behind, then bisect.
  let lo = null;
  let hi = null;
  let rate = startRate;
  let best = null;
  const tried = [];
  const budgetEnds = nowMs() + (QUICK ? 20000 : 120000);
  for (let i = 0; i < steps; i++) {
    if (nowMs() > budgetEnds) {
      log("the ramp used up its time; stopping");
      break;
    }
    const step = await runStep(publisher, recipients, rate, seconds);
    tried.push(step);
    if (step.sustained) {
      lo = rate;
      if (!best || step.rate > best.rate) best = step;
    } else {
      hi = rate;
    }
    if (!step.drained) {
      log("the server did not catch up after this step; stopping the ramp");
      break;
    }
    if (hi === null) {
      if (rate >= maxRate) break;
      rate = Math.min(maxRate, rate * 2);
    } else if (lo === null) {
      rate = Math.max(1, Math.floor(hi / 2));
      if (rate === hi) break;
    } else {
      const mid = Math.round((lo + hi) / 2);
      if (mid === lo || mid === hi || (hi - lo) / hi < 0.08) break;
      rate = mid;
    }
  }
  return { best, tried };
}

// A server recovered once the p99 of the messages published in a second is
// within this factor of the p99 before the burst, and stays so.
const RECOVERED_FACTOR = 1.2;

async function recoveryStep(publisher, recipients, rate, seconds, before) {
  // Publish at `rate` for `seconds` with no pause after what came before,
  // and summarise the latency second by second of publishing: the p99 of
  // each second, how many seconds passed until the p99 came back within
  // RECOVERED_FACTOR of `before` for good, and p50/p99 over the first and
  // the last third of the step.
  const startedAt = nowMs();
  stepCounter += 1;
  publisher.event = `m${stepCounter}`;
  setDeliveryEvent(publisher.event, "t");
  resetCounters();
  const cpu = new CpuWindow();
  const { sent } = await publisher.run(rate, seconds);
  const usage = cpu.finish();
  const expected = sent * recipients;
  const deadline = nowMs() + GRACE_MS;
  while (stats.delivered < expected && nowMs() < deadline) await sleep(10);
  const delivered = stats.delivered;
  const windows = Array.from({ length: Math.ceil(seconds) }, () => []);
  const third = seconds / 3;
  const early = [];
  const late = [];
  for (let i = 0; i < stats.sentAt.length; i++) {
    const at = (stats.sentAt[i] - startedAt) / 1000;
    const latency = stats.latencies[i];
    windows[Math.min(windows.length - 1, Math.max(0, Math.floor(at)))].push(latency);
    if (at < third) early.push(latency);
    else if (at >= seconds - third) late.push(latency);
  }
  const p99s = windows.map((w) => latencySummary(w).p99);
  // Undelivered messages never show in a window: a second that lost any
  // does not count as recovered.
  const limit = before.p99 === null ? null : before.p99 * RECOVERED_FACTOR;
  let recoveredAfter = null;
  if (limit !== null && delivered >= expected) {
    for (let k = p99s.length - 1; k >= 0 && p99s[k] !== null && p99s[k] <= limit; k--) {
      recoveredAfter = k;
    }
  }
  const result = {
    rate,
    seconds,
    publishes: sent,
    expected,
    delivered,
    before,
    p99BySecond: p99s,
    recoveredAfterSeconds: recoveredAfter,
    early: latencySummary(early),
    late: latencySummary(late),
    latency: latencySummary(stats.latencies),
    ...usage,
  };
  log(
    `after the ramp at ${rate}/s: p99 by second ${JSON.stringify(p99s)} ms (before ${before.p99}); ` +
      `recovered after ${recoveredAfter === null ? "never" : recoveredAfter} s; ` +
      `delivered ${delivered}/${expected}`
  );
  return result;
}

// ---------------------------------------------------------------------------
// Scenarios.

function size(full, quick) {
  return QUICK ? quick : full;
}

async function fanout({ subscribers, rooms, latencyRate, startRate, latencyEvery }) {
  // `subscribers` connections in `rooms` rooms; the first connection of each
  // room publishes to it.  Returns the latency at `latencyRate` and the
  // highest sustained rate.
  const perRoom = Math.ceil(subscribers / rooms);
  const channelOf = (i) => (rooms === 1 ? "bench" : `room:${Math.floor(i / perRoom)}`);
  const t0 = nowMs();
  const { conns, failures } = await openMany(
    subscribers,
    64,
    async (conn, i) => {
      conn.channel = channelOf(i);
      await conn.subscribe(conn.channel);
    },
    { onProgress: (ok, bad) => log(`${ok} connected, ${bad} failed`) }
  );
  log(`${conns.length} subscribers ready in ${Math.round(nowMs() - t0)} ms`);
  const targets = [];
  const seen = new Set();
  conns.forEach((conn) => {
    const channel = conn.channel;
    if (!seen.has(channel)) {
      seen.add(channel);
      targets.push({ conn, channel });
    }
  });
  // Recipients per message: the connections in the publishing room.
  const roomSize = new Map();
  conns.forEach((conn) => {
    roomSize.set(conn.channel, (roomSize.get(conn.channel) || 0) + 1);
  });
  const sizes = [...roomSize.values()];
  const recipients = Math.min(...sizes);
  if (Math.max(...sizes) !== recipients) throw new Error("rooms are not all the same size");
  await drain(300, 5000); // presence and other set-up traffic
  const publisher = new Publisher(targets);

  // Warm up (JIT, buffers), then the latency at the common rate, measured
  // on every connection.
  await runStep(publisher, recipients, latencyRate, size(1, 0.3));
  conns.forEach((c) => (c.measureLatency = true));
  out({ type: "phase", name: "latency", state: "start" });
  const latencyStep = await runStep(publisher, recipients, latencyRate, size(5, 1));
  out({ type: "phase", name: "latency", state: "end" });
  let note = null;
  let ramp = { best: null, tried: [] };
  let rampStart = startRate;
  if (!latencyStep.sustained) {
    // Too much already: give the server time to work off its backlog and
    // start the ramp lower.
    rampStart = Math.max(1, Math.floor(startRate / 4));
    if (!latencyStep.drained && !(await drain(1000, size(60000, 5000)))) {
      note = `still behind ${Math.round(nowMs() - latencyStep.endedAt)} ms after the ${latencyRate}/s step; no ramp`;
      log(note);
    }
  }

  // Highest sustained rate, latency sampled on a subset of connections.
  conns.forEach((c, i) => (c.measureLatency = i % latencyEvery === 0));
  if (note === null) {
    out({ type: "phase", name: "ramp", state: "start" });
    ramp = await findSustainedRate(publisher, recipients, rampStart, {
      seconds: size(3, 0.5),
      steps: size(11, 3),
      maxRate: 50000,
    });
    out({ type: "phase", name: "ramp", state: "end" });
  }
  // Straight after the ramp (the burst), the common rate again, on every
  // connection: how soon latency is back to what it was before.
  let after = null;
  if (note === null) {
    conns.forEach((c) => (c.measureLatency = true));
    out({ type: "phase", name: "recovery", state: "start" });
    after = await recoveryStep(publisher, recipients, latencyRate, size(15, 3), latencyStep.latency);
    out({ type: "phase", name: "recovery", state: "end" });
  }
  closeAll(conns);
  return {
    connections: conns.length,
    connectFailures: failures,
    recipientsPerMessage: recipients,
    latencyRate,
    latencyAtRate: latencyStep,
    sustained: ramp.best,
    afterRamp: after,
    note,
    // The ramp's steps in the order they ran, with what a plot of latency
    // against the offered rate needs.
    steps: ramp.tried.map((s) => ({
      rate: s.rate,
      deliveriesPerSecond: s.deliveriesPerSecond,
      delivered: s.delivered,
      expected: s.expected,
      p50: s.latency.p50,
      p99: s.latency.p99,
      latencySamples: s.latency.samples,
      growth: s.growth,
      sustained: s.sustained,
      serverCpu: s.serverCpu,
      loadgenCpu: s.loadgenCpu,
    })),
  };
}

async function scenarioFanout() {
  return fanout({
    subscribers: size(1000, 50),
    rooms: 1,
    latencyRate: 50,
    startRate: 50,
    latencyEvery: size(20, 1),
  });
}

async function scenarioProcesses() {
  // Scenario 1's fan-out with the subscribers spread over the processes;
  // the publisher is on the first.  Run once per process count.
  return fanout({
    subscribers: size(1000, 60),
    rooms: 1,
    latencyRate: 50,
    startRate: 50,
    latencyEvery: size(20, 1),
  });
}

async function scenarioRooms() {
  return fanout({
    subscribers: size(10000, 200),
    rooms: size(100, 10),
    latencyRate: size(100, 50),
    startRate: size(100, 50),
    latencyEvery: size(20, 1),
  });
}

async function scenarioIdle() {
  const count = size(10000, 200);
  const perRoom = 100;
  await sleep(500);
  const before = readRssKb(SERVER_PID);
  const t0 = nowMs();
  const { conns, failures } = await openMany(
    count,
    64,
    async (conn, i) => conn.subscribe(`room:${Math.floor(i / perRoom)}`),
    { onProgress: (ok, bad) => log(`${ok} connected, ${bad} failed`) }
  );
  const setupSeconds = (nowMs() - t0) / 1000;
  await drain(300, 5000);
  await sleep(size(3000, 500));
  const after = readRssKb(SERVER_PID);
  // Still connected?
  const open = conns.filter((c) => c.open).length;
  closeAll(conns);
  if (before === null || after === null) throw new Error(`cannot read the RSS of pid ${SERVER_PID}`);
  return {
    connections: open,
    connectFailures: failures,
    rssBeforeKb: before,
    rssAfterKb: after,
    bytesPerConnection: Math.round(((after - before) * 1024) / open),
    setupSeconds: round(setupSeconds, 2),
  };
}

async function scenarioConnectRate() {
  const count = size(3000, 200);
  const concurrency = 64;
  out({ type: "phase", name: "connect", state: "start" });
  const t0 = nowMs();
  const cpu = new CpuWindow();
  const { conns, times, failures } = await openMany(count, concurrency, async (conn) =>
    conn.subscribe("bench")
  );
  const seconds = (nowMs() - t0) / 1000;
  const usage = cpu.finish();
  out({ type: "phase", name: "connect", state: "end" });
  closeAll(conns);
  return {
    connections: conns.length,
    connectFailures: failures,
    concurrency,
    seconds: round(seconds, 2),
    perSecond: Math.round(conns.length / seconds),
    setupLatency: latencySummary(times),
    ...usage,
  };
}

async function scenarioDatabase() {
  if (!config.databaseUrl) throw new Error("scenario 5 needs the database URL");
  const pg = require(path.join(__dirname, "peers", "node_modules", "pg"));
  const subscribers = size(100, 20);
  const rates = config.quick ? [200] : config.changeRates || [1000, 5000];
  const seconds = size(10, 1.5);
  setDeliveryEvent("INSERT", "ts");
  const { conns, failures } = await openMany(subscribers, 32, async (conn) => conn.subscribe("t"));
  conns.forEach((c) => (c.measureLatency = true));
  await drain(300, 3000);
  const writers = 32;
  const pool = new pg.Pool({ connectionString: config.databaseUrl, max: writers });
  // Warm the pool.
  await Promise.all(Array.from({ length: writers }, () => pool.query("SELECT 1")));
  const atRates = [];
  for (const rate of rates) {
    atRates.push({ offered: rate, ...(await changesAt(pool, conns, rate, seconds)) });
    await drain(300, 5000);
  }
  await pool.end();
  closeAll(conns);
  return { subscribers: conns.length, connectFailures: failures, ...atRates[0], atRates };
}

// Insert rows into the tracked table at `rate` per second for `seconds`, one
// row per transaction, and measure commit-to-receipt at every subscriber.
async function changesAt(pool, conns, rate, seconds) {
  resetCounters();
  const cpu = new CpuWindow();
  out({ type: "phase", name: "changes", state: "start", rate });
  const sql =
    "INSERT INTO t (ts, pad) VALUES (extract(epoch FROM clock_timestamp()) * 1000, $1)";
  const pad = "x".repeat(40);
  const t0 = nowMs();
  const total = Math.round(rate * seconds);
  let issued = 0;
  let done = 0;
  let failed = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  while (issued < total) {
    const due = Math.min(total, Math.floor(((nowMs() - t0) / 1000) * rate) + 1);
    while (issued < due) {
      issued += 1;
      inFlight += 1;
      maxInFlight = Math.max(maxInFlight, inFlight);
      pool.query(sql, [pad]).then(
        () => {
          done += 1;
          inFlight -= 1;
        },
        (e) => {
          failed += 1;
          inFlight -= 1;
          noteError(`insert failed: ${e.message}`);
        }
      );
    }
    await sleep(1);
  }
  while (inFlight > 0) await sleep(5);
  const writeSeconds = (nowMs() - t0) / 1000;
  const expected = done * conns.length;
  const deadline = nowMs() + 5000;
  while (stats.delivered < expected && nowMs() < deadline) await sleep(10);
  out({ type: "phase", name: "changes", state: "end", rate });
  const usage = cpu.finish();
  return {
    changes: done,
    failedChanges: failed,
    changesPerSecond: Math.round(done / writeSeconds),
    maxInFlight,
    expected,
    delivered: stats.delivered,
    errors: stats.errors,
    firstError: stats.firstError,
    latency: latencySummary(stats.latencies),
    ...usage,
  };
}

async function scenarioStoredPublishes() {
  const publishers = size(50, 5);
  const window = 8;
  const seconds = size(10, 1);
  const { conns, failures } = await openMany(publishers, 32, async (conn, i) =>
    conn.subscribe(`pub:${i}`)
  );
  await drain(300, 3000);
  resetCounters();
  let acked = 0;
  let failed = 0;
  let stop = false;
  const t0 = nowMs();
  const cpu = new CpuWindow();
  out({ type: "phase", name: "publish", state: "start" });
  const loops = conns.map((conn, i) => {
    const channel = `pub:${i}`;
    const one = async () => {
      while (!stop) {
        const reply = await conn.request("REALTIME_PUBLISH", {
          channel,
          event: "m",
          payload: { t: nowMs(), p: "x".repeat(70) },
        });
        if (reply && reply.ok === true) acked += 1;
        else {
          failed += 1;
          noteError(`publish refused: ${JSON.stringify(reply)}`);
          if (failed > 100) stop = true;
        }
      }
    };
    return Promise.all(Array.from({ length: window }, one));
  });
  await sleep(seconds * 1000);
  stop = true;
  const ackedAtStop = acked;
  const took = (nowMs() - t0) / 1000;
  const usage = cpu.finish();
  await Promise.race([Promise.all(loops), sleep(10000)]);
  out({ type: "phase", name: "publish", state: "end" });
  await drain(300, 3000);
  closeAll(conns);
  return {
    publishers: conns.length,
    connectFailures: failures,
    inFlightPerPublisher: window,
    seconds: round(took, 2),
    acked: acked,
    failed,
    firstError: stats.firstError,
    perSecond: Math.round(ackedAtStop / took),
    deliveredToPublishers: stats.delivered,
    ...usage,
  };
}

// ---------------------------------------------------------------------------
// The soak: a steady load held for a long time, reported interval by
// interval.

function within(promise, ms, what) {
  // `promise`, or a rejection after `ms` milliseconds.
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

class Churn {
  // Short-lived connections opened at a steady rate, each subscribed to
  // `channel` and closed after about `lifetimeSeconds` (0.5x to 1.5x of it),
  // in turn: unsubscribed and then disconnected politely, disconnected
  // politely while still subscribed, or dropped without a word.  At most
  // `maxPending` handshakes at a time: a start due while that many are
  // pending is skipped and counted, so a slow server is never flooded.
  constructor(channel, rate, lifetimeSeconds, maxPending) {
    this.channel = channel;
    this.rate = rate;
    this.lifetimeMs = lifetimeSeconds * 1000;
    this.maxPending = maxPending;
    this.alive = new Set();
    this.pending = 0;
    this.started = 0;
    this.opened = 0;
    this.failed = 0;
    this.skipped = 0;
    this.closed = 0;
    this.firstFailure = null;
    this.setupTimes = []; // ms from TCP connect to the subscribe ack, since the last report
    this.stopped = false;
  }

  startOne() {
    this.started += 1;
    this.pending += 1;
    const conn = new Connection();
    conn.churn = true;
    const t0 = nowMs();
    conn
      .connect(10000)
      .then(() => within(conn.subscribe(this.channel), 10000, "subscribe"))
      .then(
        () => {
          this.pending -= 1;
          this.opened += 1;
          this.setupTimes.push(nowMs() - t0);
          if (this.stopped) {
            conn.destroy();
            return;
          }
          this.alive.add(conn);
          conn.endTimer = setTimeout(() => this.end(conn), this.lifetimeMs * (0.5 + Math.random()));
        },
        (e) => {
          this.pending -= 1;
          this.failed += 1;
          if (this.firstFailure === null) this.firstFailure = String(e.message || e);
          conn.destroy();
        }
      );
  }

  end(conn) {
    this.alive.delete(conn);
    const way = this.closed % 3;
    this.closed += 1;
    if (way === 0) {
      within(conn.request("REALTIME_UNSUBSCRIBE", { channel: this.channel }), 5000, "unsubscribe").then(
        (reply) => {
          if (!reply || reply.ok !== true) noteError(`unsubscribe refused: ${JSON.stringify(reply)}`);
          conn.leave();
        },
        (e) => {
          noteError(`unsubscribe failed: ${e.message || e}`);
          conn.destroy();
        }
      );
    } else if (way === 1) {
      conn.leave();
    } else {
      conn.destroy();
    }
  }

  async run(seconds) {
    // Open loop, like Publisher.run: `rate` starts per second for `seconds`.
    const t0 = nowMs();
    const total = Math.round(this.rate * seconds);
    let done = 0;
    while (done < total && !this.stopped) {
      const due = Math.min(total, Math.floor(((nowMs() - t0) / 1000) * this.rate) + 1);
      while (done < due) {
        done += 1;
        if (this.pending >= this.maxPending) this.skipped += 1;
        else this.startOne();
      }
      await sleep(5);
    }
  }

  async stop(timeoutMs) {
    // No more starts; wait for the handshakes under way, then drop every
    // connection still open.
    this.stopped = true;
    const deadline = nowMs() + timeoutMs;
    while (this.pending > 0 && nowMs() < deadline) await sleep(20);
    for (const conn of this.alive) {
      clearTimeout(conn.endTimer);
      conn.destroy();
    }
    this.alive.clear();
  }

  counters() {
    return {
      started: this.started,
      opened: this.opened,
      failed: this.failed,
      skipped: this.skipped,
      closed: this.closed,
    };
  }
}

function minus(a, b) {
  const d = {};
  for (const k of Object.keys(a)) d[k] = a[k] - (b[k] || 0);
  return d;
}

async function scenarioSoak() {
  // `subscribers` connections on channel `bench`, one of them publishing
  // `rate` messages/s for `seconds`, while the churn opens and closes
  // short-lived subscribers of the same channel.  Every `intervalSeconds`
  // one {"type":"interval"} line: what arrived in that interval, the
  // latency of the deliveries read in it, the server's RSS at its end and
  // CPU use over it.  At the end, whether every subscriber got every
  // acknowledged publish.
  const soak = config.soak || {};
  const subscribers = soak.subscribers ?? 1000;
  const rate = soak.rate ?? 50;
  const seconds = soak.seconds ?? 1800;
  const intervalSeconds = soak.intervalSeconds ?? 10;
  const churnRate = soak.churnPerSecond ?? 20;
  const churnLifetime = soak.churnLifetimeSeconds ?? 10;
  const latencyEvery = Math.max(1, soak.latencyEvery ?? 10);
  const channel = "bench";
  setDeliveryEvent("m", "t");
  const setupStarted = nowMs();
  const { conns, failures } = await openMany(subscribers, 64, (conn) => conn.subscribe(channel), {
    onProgress: (ok, bad) => log(`${ok} connected, ${bad} failed`),
  });
  conns.forEach((c, i) => (c.measureLatency = i % latencyEvery === 0));
  log(`${conns.length} subscribers ready in ${Math.round(nowMs() - setupStarted)} ms`);
  await drain(300, 5000);
  resetCounters();
  stats.churnDelivered = 0;
  stats.closedUnexpectedly = 0;
  const publisher = new Publisher([{ conn: conns[0], channel }]);
  const churn = new Churn(channel, churnRate, churnLifetime, 100);
  log(
    `soak: ${rate} publishes/s to ${conns.length} subscribers, ${churnRate} new connections/s ` +
      `living ~${churnLifetime} s, for ${seconds} s, a report every ${intervalSeconds} s`
  );
  out({ type: "phase", name: "soak", state: "start" });
  const t0 = nowMs();
  const publishing = publisher.run(rate, seconds);
  const churning = churn.run(seconds);
  let cpu = new CpuWindow();
  const snapshot = () => ({
    at: nowMs(),
    published: publisher.sent,
    acked: publisher.acked,
    failed: publisher.failed,
    delivered: stats.delivered,
    churnDelivered: stats.churnDelivered,
    errors: stats.errors,
  });
  let previous = snapshot();
  let previousChurn = churn.counters();
  const count = Math.ceil(seconds / intervalSeconds);
  for (let k = 1; k <= count; k++) {
    const wait = t0 + Math.min(seconds, k * intervalSeconds) * 1000 - nowMs();
    if (wait > 0) await sleep(wait);
    const usage = cpu.finish();
    cpu = new CpuWindow();
    const latencies = stats.latencies;
    stats.latencies = [];
    stats.sentAt = [];
    const current = snapshot();
    const d = minus(current, previous);
    const churnNow = churn.counters();
    const setup = latencySummary(churn.setupTimes);
    churn.setupTimes = [];
    const took = d.at / 1000;
    out({
      type: "interval",
      index: k,
      t: round((current.at - t0) / 1000, 2), // end of the interval, s since the load started
      seconds: round(took, 2),
      rssKb: readRssKb(SERVER_PID),
      published: d.published,
      acked: d.acked,
      failed: d.failed,
      unanswered: current.published - current.acked - current.failed,
      delivered: d.delivered,
      deliveriesPerSecond: Math.round(d.delivered / took),
      churnDelivered: d.churnDelivered,
      latency: latencySummary(latencies),
      ...usage,
      churn: {
        ...minus(churnNow, previousChurn),
        alive: churn.alive.size,
        pending: churn.pending,
        setupP50: setup.p50,
        setupP99: setup.p99,
      },
      errors: d.errors,
      closedUnexpectedly: stats.closedUnexpectedly,
    });
    previous = current;
    previousChurn = churnNow;
  }
  await publishing;
  await churning;
  await churn.stop(10000);
  // Every publish answered and every delivery in, for at most 30 s.
  const settleDeadline = nowMs() + 30000;
  while (
    (publisher.acked + publisher.failed < publisher.sent ||
      stats.delivered < publisher.acked * conns.length) &&
    nowMs() < settleDeadline
  ) {
    await sleep(20);
  }
  const drained = await drain(300, 3000);
  out({ type: "phase", name: "soak", state: "end" });
  const expected = publisher.acked * conns.length;
  let lost = 0;
  let subscribersShort = 0;
  for (const c of conns) {
    const short = publisher.acked - c.received;
    if (short > 0) {
      lost += short;
      subscribersShort += 1;
    }
  }
  const openAtEnd = conns.filter((c) => c.open).length;
  log(
    `soak over: ${publisher.acked}/${publisher.sent} publishes acknowledged, ` +
      `${stats.delivered}/${expected} delivered, ${lost} lost`
  );
  closeAll(conns);
  return {
    subscribers: conns.length,
    connectFailures: failures,
    rate,
    seconds,
    intervalSeconds,
    churnPerSecond: churnRate,
    churnLifetimeSeconds: churnLifetime,
    latencyEvery,
    published: publisher.sent,
    acked: publisher.acked,
    failed: publisher.failed,
    expected,
    delivered: stats.delivered,
    lost,
    subscribersShort,
    subscribersOpenAtEnd: openAtEnd,
    churnDelivered: stats.churnDelivered,
    churn: { ...churn.counters(), firstFailure: churn.firstFailure },
    errors: stats.errors,
    firstError: stats.firstError,
    closedUnexpectedly: stats.closedUnexpectedly,
    drained,
  };
}

const SCENARIOS = {
  1: scenarioFanout,
  2: scenarioRooms,
  3: scenarioIdle,
  4: scenarioConnectRate,
  5: scenarioDatabase,
  6: scenarioStoredPublishes,
  7: scenarioProcesses,
  soak: scenarioSoak,
};

async function main() {
  const scenario = SCENARIOS[config.scenario];
  if (!scenario) throw new Error(`no scenario ${config.scenario}`);
  const hardStop = setTimeout(() => {
    log(`scenario ${config.scenario} ran past its time limit`);
    out({ type: "error", message: "time limit" });
    process.exit(3);
  }, (config.timeLimitSeconds || 600) * 1000);
  hardStop.unref();
  const result = await scenario();
  out({ type: "result", scenario: config.scenario, ...result });
}

main().then(
  () => process.exit(0),
  (e) => {
    log(`failed: ${e.stack || e}`);
    out({ type: "error", message: String(e.message || e) });
    process.exit(2);
  }
);
