/* hiredis (Debian's libhiredis-dev) against a run_raft cluster, for tests/test_clients.cpp:
 *   hiredis_client FOLLOWER_IP LEADER_IP PORT GO_FILE
 * On the follower: strings, counters, hashes, lists, a pipeline (redisAppendCommand). RESP3
 * needs hiredis 1.0 (Debian 12 has 0.14): said so when absent. Then one connection to the
 * leader: a write, "ready", and once GO_FILE exists (the test has SIGKILLed that leader)
 * writes again, reconnecting with redisReconnect, until one gets through; reads it back. */
#include <hiredis/hiredis.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_S 30

static void fail(const char* what, const char* detail) {
  fprintf(stderr, "hiredis failed: %s: %s\n", what, detail ? detail : "");
  exit(1);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* The reply must be of `type` with text `str` (NULL: any) or integer `num`. */
static void expect(redisReply* r, int type, const char* str, long long num, const char* what) {
  if (r == NULL) fail(what, "no reply");
  if (r->type != type) fail(what, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply type");
  if (str && (r->str == NULL || strcmp(r->str, str) != 0)) fail(what, r->str);
  if (type == REDIS_REPLY_INTEGER && r->integer != num) fail(what, "unexpected integer");
}

static void check(redisContext* c, int type, const char* str, long long num, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply* r = redisvCommand(c, fmt, ap);
  va_end(ap);
  if (r == NULL) fail(fmt, c->errstr);
  expect(r, type, str, num, fmt);
  freeReplyObject(r);
}

/* A server's "try again" errors: no leader yet, a write of unknown outcome. */
static int retryable_error(const redisReply* r) {
  static const char* codes[] = {"TRYAGAIN", "CLUSTERDOWN", "TIMEOUT", "MOVED", "MISCONF"};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; ++i)
    if (strncmp(r->str, codes[i], strlen(codes[i])) == 0) return 1;
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s FOLLOWER_IP LEADER_IP PORT GO_FILE\n", argv[0]);
    return 2;
  }
  const char *follower = argv[1], *leader = argv[2], *go_file = argv[4];
  const int port = atoi(argv[3]);
  const struct timeval timeout = {5, 0};

  redisContext* c = redisConnectWithTimeout(follower, port, timeout);
  if (c == NULL || c->err) fail("connect to the follower", c ? c->errstr : "out of memory");
  redisSetTimeout(c, timeout);
  check(c, REDIS_REPLY_STATUS, "OK", 0, "SET hiredis:s v1");
  check(c, REDIS_REPLY_STRING, "v1", 0, "GET hiredis:s");
  check(c, REDIS_REPLY_INTEGER, NULL, 1, "INCR hiredis:n");
  check(c, REDIS_REPLY_INTEGER, NULL, 2, "HSET hiredis:h f1 a f2 b");
  check(c, REDIS_REPLY_STRING, "b", 0, "HGET hiredis:h f2");
  check(c, REDIS_REPLY_INTEGER, NULL, 2, "RPUSH hiredis:l x y");
  redisReply* r = redisCommand(c, "LRANGE hiredis:l 0 -1");
  expect(r, REDIS_REPLY_ARRAY, NULL, 0, "LRANGE");
  if (r->elements != 2 || strcmp(r->element[0]->str, "x") != 0 || strcmp(r->element[1]->str, "y") != 0)
    fail("LRANGE", "not [x, y]");
  freeReplyObject(r);
  /* A pipeline: every command written before any reply is read. */
  for (int i = 0; i < 20; ++i) redisAppendCommand(c, "SET hiredis:p%d %d", i, i);
  redisAppendCommand(c, "INCRBY hiredis:n 20");
  redisAppendCommand(c, "GET hiredis:p19");
  for (int i = 0; i < 22; ++i) {
    void* reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK) fail("pipeline", c->errstr);
    if (i < 20) expect(reply, REDIS_REPLY_STATUS, "OK", 0, "pipelined SET");
    if (i == 20) expect(reply, REDIS_REPLY_INTEGER, NULL, 21, "pipelined INCRBY");
    if (i == 21) expect(reply, REDIS_REPLY_STRING, "19", 0, "pipelined GET");
    freeReplyObject(reply);
  }
  printf("hiredis basic ok\n");
#ifdef REDIS_REPLY_MAP
  /* hiredis 1.x: HELLO 3 switches the connection to RESP3; a hash comes back as a map. */
  check(c, REDIS_REPLY_MAP, NULL, 0, "HELLO 3");
  r = redisCommand(c, "HGETALL hiredis:h");
  expect(r, REDIS_REPLY_MAP, NULL, 0, "HGETALL in RESP3");
  if (r->elements != 4) fail("HGETALL in RESP3", "not two fields");
  freeReplyObject(r);
  printf("hiredis resp3 ok\n");
#else
  printf("hiredis resp3 unsupported: hiredis %d.%d has no RESP3 (hiredis 1.0 has)\n", HIREDIS_MAJOR, HIREDIS_MINOR);
#endif
  redisFree(c);

  c = redisConnectWithTimeout(leader, port, timeout);
  if (c == NULL || c->err) fail("connect to the leader", c ? c->errstr : "out of memory");
  redisSetTimeout(c, timeout);
  check(c, REDIS_REPLY_STATUS, "OK", 0, "SET hiredis:before before-kill");
  printf("hiredis ready\n");
  fflush(stdout);
  const double go_deadline = now_s() + DEADLINE_S;
  while (access(go_file, F_OK) != 0) {
    if (now_s() > go_deadline) fail("waiting", "no go file");
    sleep_ms(20);
  }
  /* The leader is gone: a command fails with an I/O error, then redisReconnect opens a new
   * connection to the same address (the node is restarted) until one is established. */
  const double deadline = now_s() + DEADLINE_S;
  int attempts = 0;
  for (;;) {
    ++attempts;
    if (now_s() > deadline) fail("through the kill", c->err ? c->errstr : "still retrying");
    if (c->err) {
      if (redisReconnect(c) != REDIS_OK) {
        sleep_ms(50);
        continue;
      }
      redisSetTimeout(c, timeout);
    }
    r = redisCommand(c, "SET hiredis:after after-kill");
    if (r == NULL) continue; /* c->err is set: reconnect */
    if (r->type == REDIS_REPLY_ERROR && retryable_error(r)) {
      freeReplyObject(r);
      sleep_ms(50);
      continue;
    }
    expect(r, REDIS_REPLY_STATUS, "OK", 0, "SET hiredis:after after attempts");
    freeReplyObject(r);
    break;
  }
  check(c, REDIS_REPLY_STRING, "after-kill", 0, "GET hiredis:after");
  printf("hiredis reconnected ok after %d attempts\n", attempts);
  redisFree(c);
  return 0;
}
