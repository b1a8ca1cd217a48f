# redis-py against a run_raft cluster, for tests/test_clients.cpp (the client matrix):
#   python3 clients.py sync|asyncio FOLLOWER_IP LEADER_IP PORT GO_FILE
# On the follower: strings, counters, hashes, lists, a pipeline (RESP2; RESP3 needs redis-py 5:
# said so when absent). Then one connection to the leader: a write, "ready", and once GO_FILE
# exists (the test has SIGKILLed that leader) writes again until redis-py's reconnection and
# our retries get one through; reads it back. Every line it prints starts with its tag.
import asyncio
import inspect
import os
import sys
import time

import redis
import redis.asyncio

mode, follower, leader, port, go_file = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
tag = 'py-' + mode
RETRYABLE = ('TRYAGAIN', 'CLUSTERDOWN', 'TIMEOUT', 'MOVED', 'MISCONF')
DEADLINE_S = 30


def say(what):
    print(tag, what, flush=True)


def retryable(e):
    if isinstance(e, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return True
    return isinstance(e, redis.exceptions.ResponseError) and str(e).startswith(RETRYABLE)


def check_basic(results):
    assert results['set'] is True, results
    assert results['get'] == b'v1', results
    assert results['incr'] == 1, results
    assert results['hgetall'] == {b'f1': b'a', b'f2': b'b'}, results
    assert results['lrange'] == [b'x', b'y'], results
    assert results['pipeline'] == [True] * 20 + [21, b'19'], results


def resp3_supported():
    if 'protocol' in inspect.signature(redis.Redis.__init__).parameters:
        return True
    say('resp3 unsupported: redis-py %s has no protocol=3 (redis-py 5 has)' % redis.__version__)
    return False


def run_sync():
    r = redis.Redis(host=follower, port=port, socket_timeout=10)
    res = {'set': r.set(tag + ':s', 'v1'), 'get': r.get(tag + ':s'), 'incr': r.incr(tag + ':n')}
    r.hset(tag + ':h', mapping={'f1': 'a', 'f2': 'b'})
    res['hgetall'] = r.hgetall(tag + ':h')
    r.rpush(tag + ':l', 'x', 'y')
    res['lrange'] = r.lrange(tag + ':l', 0, -1)
    p = r.pipeline(transaction=False)
    for i in range(20):
        p.set('%s:p%d' % (tag, i), i)
    p.incrby(tag + ':n', 20)
    p.get(tag + ':p19')
    res['pipeline'] = p.execute()
    check_basic(res)
    say('basic ok')
    if resp3_supported():
        r3 = redis.Redis(host=follower, port=port, protocol=3)
        assert r3.hgetall(tag + ':h') == {b'f1': b'a', b'f2': b'b'}
        say('resp3 ok')

    # Through a leader kill: redis-py reconnects its pool's connection at the next command.
    c = redis.Redis(host=leader, port=port, socket_timeout=5, socket_connect_timeout=2)
    assert c.set(tag + ':before', 'before-kill') is True
    say('ready')
    wait_for_go()
    deadline = time.monotonic() + DEADLINE_S
    attempts = 0
    while True:
        attempts += 1
        try:
            assert c.set(tag + ':after', 'after-kill') is True
            assert c.get(tag + ':after') == b'after-kill'
            break
        except Exception as e:  # noqa: BLE001 - only the retryable ones are retried
            if not retryable(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    say('reconnected ok after %d attempts' % attempts)


async def run_asyncio():
    r = redis.asyncio.Redis(host=follower, port=port, socket_timeout=10)
    res = {'set': await r.set(tag + ':s', 'v1'), 'get': await r.get(tag + ':s'), 'incr': await r.incr(tag + ':n')}
    await r.hset(tag + ':h', mapping={'f1': 'a', 'f2': 'b'})
    res['hgetall'] = await r.hgetall(tag + ':h')
    await r.rpush(tag + ':l', 'x', 'y')
    res['lrange'] = await r.lrange(tag + ':l', 0, -1)
    p = r.pipeline(transaction=False)
    for i in range(20):
        p.set('%s:p%d' % (tag, i), i)
    p.incrby(tag + ':n', 20)
    p.get(tag + ':p19')
    res['pipeline'] = await p.execute()
    check_basic(res)
    say('basic ok')
    if resp3_supported():
        r3 = redis.asyncio.Redis(host=follower, port=port, protocol=3)
        assert await r3.hgetall(tag + ':h') == {b'f1': b'a', b'f2': b'b'}
        say('resp3 ok')

    c = redis.asyncio.Redis(host=leader, port=port, socket_timeout=5, socket_connect_timeout=2)
    assert await c.set(tag + ':before', 'before-kill') is True
    say('ready')
    await asyncio.get_running_loop().run_in_executor(None, wait_for_go)
    deadline = time.monotonic() + DEADLINE_S
    attempts = 0
    while True:
        attempts += 1
        try:
            assert await c.set(tag + ':after', 'after-kill') is True
            assert await c.get(tag + ':after') == b'after-kill'
            break
        except Exception as e:  # noqa: BLE001
            if not retryable(e) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    say('reconnected ok after %d attempts' % attempts)


def wait_for_go():
    deadline = time.monotonic() + DEADLINE_S
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise SystemExit(tag + ' no go file')
        time.sleep(0.02)


if mode == 'sync':
    run_sync()
else:
    asyncio.run(run_asyncio())
