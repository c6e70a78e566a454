// A Node.js hello server for `handoff run`: it knows nothing of Go.
//
//   handoff run --listen tcp://127.0.0.1:8080 --workers 4 --pidfile run/node.pid \
//     -- node examples/node/server.js
//
// It serves on the socket handoff passes as fd 3 (LISTEN_FDS), says it is
// ready with READY=1 on $NOTIFY_SOCKET (through systemd-notify, as Node has
// no unix datagram client; without it run handoff with --ready delay:1s),
// and accepts only once handoff writes "G" on its stdin: its generation is
// ready, so a new generation that fails takes no connection with it. On
// SIGTERM it drains without dropping a request: it stops accepting,
// answers what comes with "Connection: close", gives idle keep-alive
// connections a grace to send one more request, then exits.
'use strict';

const http = require('node:http');
const net = require('node:net');
const { execFile } = require('node:child_process');

const IDLE_GRACE_MS = 1000;
const DRAIN_TIMEOUT_MS = Number(process.env.DRAIN_TIMEOUT_MS || 30000);
const version = process.env.APP_VERSION || 'node-dev';

function log(msg, extra = {}) {
  const fields = Object.entries({ pid: process.pid, ...extra }).map(([k, v]) => `${k}=${v}`);
  process.stderr.write(`app=node msg="${msg}" ${fields.join(' ')}\n`);
}

if (process.env.LISTEN_PID !== String(process.pid) || Number(process.env.LISTEN_FDS) < 1) {
  log('no socket passed: run me under handoff run (LISTEN_FDS, LISTEN_PID)');
  process.exit(2);
}

let draining = false;
const sockets = new Map(); // socket -> { busy: requests in flight, idleSince }

const server = http.createServer((req, res) => {
  if (draining) res.setHeader('Connection', 'close');
  if (req.url === '/version') {
    res.end(version + '\n');
    return;
  }
  if (req.url.startsWith('/sleep')) {
    const ms = Number(new URL(req.url, 'http://x').searchParams.get('ms') || 0);
    setTimeout(() => res.end(`slept ${ms}ms in pid ${process.pid}\n`), ms);
    return;
  }
  req.resume();
  req.on('end', () => res.end('Hello, world!\n'));
});

server.on('connection', (socket) => {
  sockets.set(socket, { busy: 0, idleSince: Date.now() });
  socket.on('close', () => sockets.delete(socket));
});
server.on('request', (req, res) => {
  const s = sockets.get(req.socket);
  if (s) s.busy++;
  res.on('finish', () => {
    const s = sockets.get(req.socket);
    if (s) {
      s.busy--;
      s.idleSince = Date.now();
    }
  });
});

// Ready to serve: say so. Accept once the master opens the gate.
notifyReady();
let listening = false;
function openGate() {
  if (listening || draining) return;
  listening = true;
  server.listen({ fd: 3 }, () => {
    log('listening', { fd: 3, names: process.env.LISTEN_FDNAMES || '' });
  });
}

// notifyReady sends READY=1 to the master, if it asked for it.
function notifyReady() {
  if (!process.env.NOTIFY_SOCKET) return;
  execFile('systemd-notify', ['--ready'], (err) => {
    if (err) log('cannot notify ready: use handoff run --ready delay:DUR', { err: err.code || err.message });
  });
}

function drain(signal) {
  if (draining) return;
  draining = true;
  if (!listening) {
    log('stopped before accepting', { signal });
    process.exit(0);
  }
  const start = Date.now();
  log('draining', { signal });
  // Stop accepting, leaving the open connections alone: http.Server.close
  // would also close the idle keep-alive ones at once, and a request a
  // client is sending on one of them would be lost.
  net.Server.prototype.close.call(server, () => {
    log('drained', { ms: Date.now() - start });
    process.exit(0);
  });
  const tick = setInterval(() => {
    const now = Date.now();
    for (const [socket, s] of sockets) {
      if (s.busy === 0 && now - Math.max(s.idleSince, start) >= IDLE_GRACE_MS) socket.destroy();
    }
    if (now - start >= DRAIN_TIMEOUT_MS) {
      log('drain timeout: connections cut', { cut: sockets.size });
      for (const socket of sockets.keys()) socket.destroy();
    }
  }, 20);
  tick.unref();
}

process.on('SIGTERM', () => drain('SIGTERM'));
process.on('SIGINT', () => drain('SIGINT'));

// stdin is the lifeline from handoff: "G" opens the accept gate, EOF means
// the master is gone.
process.stdin.on('data', (chunk) => {
  if (chunk.includes(0x47)) openGate(); // 'G'
});
process.stdin.on('end', () => {
  log('master gone, exiting');
  process.exit(1);
});
process.stdin.on('error', () => {});
process.stdin.resume();
