// ioredis and node-redis against a run_raft cluster, for tests/test_clients.cpp:
//   NODE_PATH=build/npm/node_modules node clients.js ioredis|node-redis FOLLOWER_IP LEADER_IP PORT GO_FILE
// On the follower: strings, counters, hashes, lists, a pipeline; RESP3 with node-redis
// (RESP: 3); ioredis speaks RESP2 only (redis/ioredis#1073), said so. Then one client on the
// leader: a write, "ready", and once GO_FILE exists (the test has SIGKILLed that leader)
// writes again until the library's reconnection and our retries get one through; reads it
// back. Every line it prints starts with its tag.
'use strict';
const fs = require('fs');
const assert = require('assert');

const [mode, follower, leader, portText, goFile] = process.argv.slice(2);
const port = Number(portText);
const tag = 'js-' + mode;
const RETRYABLE = ['TRYAGAIN', 'CLUSTERDOWN', 'TIMEOUT', 'MOVED', 'MISCONF'];
const DEADLINE_MS = 30000;

const say = (what) => console.log(tag + ' ' + what);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A server's "try again" errors and the libraries' own errors for a lost or closed
// connection are retried; anything else (a wrong reply, a type error) fails the run.
function retryable(e) {
  const text = String(e && e.message);
  if (RETRYABLE.some((code) => text.startsWith(code))) return true;
  return /closed|ECONNREFUSED|ECONNRESET|EPIPE|connect|Connection|max retries|Socket|timeout/i.test(text);
}

async function waitForGo() {
  const deadline = Date.now() + DEADLINE_MS;
  while (!fs.existsSync(goFile)) {
    if (Date.now() > deadline) throw new Error('no go file');
    await sleep(20);
  }
}

async function throughKill(setAfter, getAfter) {
  await waitForGo();
  const deadline = Date.now() + DEADLINE_MS;
  for (let attempts = 1; ; ++attempts) {
    try {
      assert.strictEqual(await setAfter(), 'OK');
      assert.strictEqual(await getAfter(), 'after-kill');
      say('reconnected ok after ' + attempts + ' attempts');
      return;
    } catch (e) {
      if (!retryable(e) || Date.now() > deadline) throw e;
      await sleep(50);
    }
  }
}

async function ioredis() {
  const Redis = require('ioredis');
  // Backoff from 50 ms (times starts at 1).
  const options = { port, retryStrategy: (times) => Math.min(times * 50, 500), connectTimeout: 2000 };
  const r = new Redis({ host: follower, ...options });
  r.on('error', () => {}); // reported through the commands' promises
  assert.strictEqual(await r.set(tag + ':s', 'v1'), 'OK');
  assert.strictEqual(await r.get(tag + ':s'), 'v1');
  assert.strictEqual(await r.incr(tag + ':n'), 1);
  assert.strictEqual(await r.hset(tag + ':h', { f1: 'a', f2: 'b' }), 2);
  assert.deepStrictEqual(await r.hgetall(tag + ':h'), { f1: 'a', f2: 'b' });
  assert.strictEqual(await r.rpush(tag + ':l', 'x', 'y'), 2);
  assert.deepStrictEqual(await r.lrange(tag + ':l', 0, -1), ['x', 'y']);
  const p = r.pipeline();
  for (let i = 0; i < 20; ++i) p.set(tag + ':p' + i, String(i));
  p.incrby(tag + ':n', 20).get(tag + ':p19');
  const res = await p.exec();
  assert.deepStrictEqual(res, [...Array(20).fill([null, 'OK']), [null, 21], [null, '19']]);
  say('basic ok');
  say('resp3 unsupported: ioredis ' + require('ioredis/package.json').version + ' speaks RESP2 only');
  r.disconnect();

  const c = new Redis({ host: leader, ...options });
  c.on('error', () => {});
  assert.strictEqual(await c.set(tag + ':before', 'before-kill'), 'OK');
  say('ready');
  await throughKill(() => c.set(tag + ':after', 'after-kill'), () => c.get(tag + ':after'));
  c.disconnect();
}

async function nodeRedis() {
  const { createClient } = require('redis');
  // Backoff from 50 ms. (At 0 ms, a reconnection that reached a node in the moment it was
  // dying, accepted and then reset, once left node-redis 5.9 "ready" on a dead socket with our
  // SET pending forever, as in redis/node-redis#3108.)
  const socket = {
    port,
    connectTimeout: 2000,
    reconnectStrategy: (retries) => Math.min((retries + 1) * 50, 500),
  };
  for (const RESP of [2, 3]) {
    const r = createClient({ socket: { host: follower, ...socket }, RESP });
    r.on('error', () => {});
    await r.connect();
    const t = tag + RESP;
    assert.strictEqual(await r.set(t + ':s', 'v1'), 'OK');
    assert.strictEqual(await r.get(t + ':s'), 'v1');
    assert.strictEqual(await r.incr(t + ':n'), 1);
    assert.strictEqual(await r.hSet(t + ':h', { f1: 'a', f2: 'b' }), 2);
    // RESP3 sends HGETALL's reply as a map; node-redis maps both to an object.
    assert.deepStrictEqual({ ...(await r.hGetAll(t + ':h')) }, { f1: 'a', f2: 'b' });
    assert.strictEqual(await r.rPush(t + ':l', ['x', 'y']), 2);
    assert.deepStrictEqual(await r.lRange(t + ':l', 0, -1), ['x', 'y']);
    const m = r.multi();
    for (let i = 0; i < 20; ++i) m.set(t + ':p' + i, String(i));
    m.incrBy(t + ':n', 20).get(t + ':p19');
    assert.deepStrictEqual(await m.execAsPipeline(), [...Array(20).fill('OK'), 21, '19']);
    // Commands issued together are pipelined on the connection.
    const auto = await Promise.all([r.set(t + ':a', '1'), r.incr(t + ':a'), r.get(t + ':a')]);
    assert.deepStrictEqual(auto, ['OK', 2, '2']);
    if (RESP === 3) {
      const hello = await r.sendCommand(['HELLO', '3']);
      assert.strictEqual(hello.proto !== undefined ? Number(hello.proto) : NaN, 3, JSON.stringify(hello));
      say('resp3 ok');
    } else {
      say('basic ok');
    }
    await r.close();
  }

  const c = createClient({ socket: { host: leader, ...socket } });
  c.on('error', () => {});
  await c.connect();
  assert.strictEqual(await c.set(tag + ':before', 'before-kill'), 'OK');
  say('ready');
  await throughKill(() => c.set(tag + ':after', 'after-kill'), () => c.get(tag + ':after'));
  await c.close();
}

// A promise the library never settles, with nothing else pending, would end the process
// quietly with code 0: say so and fail instead.
let finished = false;
process.on('exit', (code) => {
  if (!finished && code === 0) {
    console.error(tag + ' failed: a command never completed (the library dropped it)');
    process.exitCode = 1;
  }
});

(mode === 'ioredis' ? ioredis() : nodeRedis()).then(
  () => {
    finished = true;
    process.exit(0);
  },
  (e) => {
    console.error(tag + ' failed: ' + (e && e.stack ? e.stack : e));
    process.exit(1);
  },
);
