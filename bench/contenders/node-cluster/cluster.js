// The Node.js cluster pattern, as the benchmark runs it: the master forks a
// worker per CPU on one listening socket; on SIGUSR2 it replaces the
// workers one at a time (fork the replacement, wait until it listens, then
// disconnect the old one and wait for its exit), so capacity never drops.
// It prints "roll ready" once the last replacement listens and "roll done"
// once the last old worker has exited; the benchmark times both.
//
//   node cluster.js --listen 127.0.0.1:8080
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const i = process.argv.indexOf('--listen');
const listen = i > 0 ? process.argv[i + 1] : '127.0.0.1:8080';
const sep = listen.lastIndexOf(':');
const host = listen.slice(0, sep);
const port = Number(listen.slice(sep + 1));

const DRAIN_TIMEOUT_MS = 30000;

if (cluster.isPrimary) {
  const n = os.availableParallelism ? os.availableParallelism() : os.cpus().length;
  let rolling = false;

  const fork = () => new Promise((resolve, reject) => {
    const w = cluster.fork();
    const onExit = (code, signal) => reject(new Error(`worker ${w.process.pid} exited (${signal || code}) before listening`));
    w.once('exit', onExit);
    w.once('listening', () => { w.off('exit', onExit); resolve(w); });
  });

  const retire = (w) => new Promise((resolve) => {
    const timer = setTimeout(() => w.process.kill('SIGKILL'), DRAIN_TIMEOUT_MS);
    w.once('exit', () => { clearTimeout(timer); resolve(); });
    w.disconnect();
  });

  // A worker that dies on its own is replaced.
  cluster.on('exit', (w, code, signal) => {
    if (!w.exitedAfterDisconnect) {
      console.log(`worker ${w.process.pid} died (${signal || code}), replacing it`);
      fork().catch((err) => console.log(`replacement failed: ${err.message}`));
    }
  });

  process.on('SIGUSR2', async () => {
    if (rolling) {
      console.log('roll in progress, signal ignored');
      return;
    }
    rolling = true;
    const old = Object.values(cluster.workers);
    try {
      for (let k = 0; k < old.length; k++) {
        await fork();
        if (k === old.length - 1) console.log('roll ready');
        await retire(old[k]);
      }
      console.log('roll done');
    } catch (err) {
      console.log(`roll failed: ${err.message}`);
    } finally {
      rolling = false;
    }
  });

  const stop = () => {
    for (const w of Object.values(cluster.workers)) w.disconnect();
    setTimeout(() => process.exit(0), DRAIN_TIMEOUT_MS).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  Promise.all(Array.from({ length: n }, fork))
    .then(() => console.log(`master ${process.pid} ready with ${n} workers on ${listen}`))
    .catch((err) => { console.log(`start failed: ${err.message}`); process.exit(1); });
} else {
  http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end('Hello, world!\n'));
  }).listen(port, host);
}
