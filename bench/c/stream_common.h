/*
 * stream_common.h -- what raw_stream.c, uv_stream.c and ul_stream.c share,
 * so that the three stream benchmarks parse the same options, set up the
 * same file descriptors, send the same bytes, check them the same way and
 * print the same JSON line.  Only the event loop differs.
 *
 *   PROG pingpong [-t unix|tcp] [-c CONNS] [-s SIZE] [-n ROUNDTRIPS] [-V]
 *   PROG pump     [-t unix|tcp|pipe] [-n BYTES] [-q CHUNKS] [-V]
 *
 * SIZE and BYTES take a binary suffix: 1k = 1024, 2G = 2 * 1024^3.
 * -V checks every byte received against what was sent (costs CPU: off in
 * timed runs); without it the byte counts are still checked.
 *
 * The pump's writer policy, the same in the three programs: -q 0 writes
 * 64 KiB chunks until the kernel refuses one (raw: EAGAIN; libuv: the write
 * queue is not empty, as libuv's own benchmark-pump.c; libunixloop:
 * pause_writing, as an asyncio program), then waits until it can go on;
 * -q N writes at most N chunks per turn of the loop (raw: per epoll_wait;
 * libuv: N write requests, refilled from their callbacks, which libuv runs
 * in a later iteration; libunixloop: N writes, then the next N from a
 * ul_loop_call_soon() callback, as an asyncio coroutine that yields every N
 * writes).  Both are what a program written for that loop would do; they
 * differ a lot over TCP, where -q 0 fills the kernel's 4 MiB send buffer
 * and every byte crosses the cache cold.
 *
 * Design (the same for the three programs): both ends of every connection
 * live in ONE process, on ONE loop, run by ONE thread, as in libuv's own
 * benchmark-ping-pongs.c / benchmark-pump.c.  The fds are made before the
 * loop starts, with plain socket()/bind()/listen()/connect()/accept() (TCP
 * over 127.0.0.1, TCP_NODELAY on both ends), socketpair(AF_UNIX,
 * SOCK_STREAM) (unix) or pipe2() (pipe).  Why one thread: a round trip then
 * costs exactly the CPU that the loop (user) and the kernel (sys) spend on
 * it, on one core, so rates compare the loops' per-event overhead.  With
 * client and server on two threads of a 2-vCPU VM, each round trip costs two
 * cross-CPU wake-ups (IPIs, idle exit) whose latency dwarfs and hides the
 * loop's own cost, and the rates depend on the scheduler's placement of the
 * two threads, not on the loop.
 */
#ifndef STREAM_COMMON_H
#define STREAM_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Writers write CHUNK bytes per call (pump); readers read up to READ_SIZE
 * (libunixloop's fixed read size, asyncio's max_size). */
#define SB_CHUNK (64 * 1024)
#define SB_READ_SIZE (256 * 1024)
#define SB_MAX_CONNS 1024

enum { SB_PINGPONG = 1, SB_PUMP = 2 };
enum { SB_UNIX = 1, SB_TCP = 2, SB_PIPE = 3 };

typedef struct sb_opts {
  int workload;       /* SB_PINGPONG / SB_PUMP */
  int transport;      /* SB_UNIX / SB_TCP / SB_PIPE */
  int conns;          /* pingpong: connections */
  size_t size;        /* pingpong: message size */
  uint64_t n;         /* pingpong: total round trips; pump: total bytes */
  int verify;         /* -V */
  long q;             /* pump: -q CHUNKS (see above) */
  long extra;         /* -H (ul: high water) */
  int have_extra;
} sb_opts;

static inline double sb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline double sb_cpu(int who_sys) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  struct timeval tv = who_sys ? ru.ru_stime : ru.ru_utime;
  return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

static inline void sb_die(const char *what, long err) {
  fprintf(stderr, "%s failed: %ld (%s)\n", what, err,
          strerror(err < 0 ? (int)-err : (int)err));
  exit(1);
}

#define SB_CHECK(expr)                                                      \
  do {                                                                      \
    long sb_r_ = (long)(expr);                                              \
    if (sb_r_ < 0) {                                                        \
      fprintf(stderr, "%s:%d: %s failed: %ld (%s)\n", __FILE__, __LINE__,   \
              #expr, sb_r_, strerror(sb_r_ == -1 ? errno : (int)-sb_r_));   \
      exit(1);                                                              \
    }                                                                       \
  } while (0)

static inline void sb_usage(const char *prog, const char *extra) {
  fprintf(stderr,
          "usage: %s pingpong [-t unix|tcp] [-c CONNS] [-s SIZE] "
          "[-n ROUNDTRIPS] [-V]\n"
          "       %s pump [-t unix|tcp|pipe] [-n BYTES] [-q CHUNKS] [-V]%s\n"
          "SIZE/BYTES: 64, 1k, 256M, 2G (binary suffixes)\n",
          prog, prog, extra ? extra : "");
  exit(2);
}

static inline uint64_t sb_parse_size(const char *s, const char *prog) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  switch (*end) {
  case 'k': case 'K': v <<= 10; end++; break;
  case 'm': case 'M': v <<= 20; end++; break;
  case 'g': case 'G': v <<= 30; end++; break;
  default: break;
  }
  if (end == s || *end != '\0') sb_usage(prog, NULL);
  return (uint64_t)v;
}

/* `extra_opt` is the one implementation-specific option ('H' or 0),
 * described by `extra_usage`; `q_default` is -q's default. */
static inline sb_opts sb_args(int argc, char **argv, char extra_opt,
                              const char *extra_usage, long extra_default,
                              long q_default) {
  sb_opts o;
  int i;
  memset(&o, 0, sizeof o);
  o.transport = SB_UNIX;
  o.conns = 1;
  o.size = 64;
  o.extra = extra_default;
  o.q = q_default;
  if (argc < 2) sb_usage(argv[0], extra_usage);
  if (strcmp(argv[1], "pingpong") == 0) {
    o.workload = SB_PINGPONG;
    o.n = 100000;
  } else if (strcmp(argv[1], "pump") == 0) {
    o.workload = SB_PUMP;
    o.n = (uint64_t)1 << 30;
  } else {
    sb_usage(argv[0], extra_usage);
  }
  for (i = 2; i < argc; i++) {
    const char *a = argv[i];
    int has_val = i + 1 < argc;
    if (strcmp(a, "-V") == 0) {
      o.verify = 1;
    } else if (strcmp(a, "-t") == 0 && has_val) {
      const char *t = argv[++i];
      if (strcmp(t, "unix") == 0) o.transport = SB_UNIX;
      else if (strcmp(t, "tcp") == 0) o.transport = SB_TCP;
      else if (strcmp(t, "pipe") == 0) o.transport = SB_PIPE;
      else sb_usage(argv[0], extra_usage);
    } else if (strcmp(a, "-c") == 0 && has_val) {
      o.conns = atoi(argv[++i]);
    } else if (strcmp(a, "-s") == 0 && has_val) {
      o.size = (size_t)sb_parse_size(argv[++i], argv[0]);
    } else if (strcmp(a, "-n") == 0 && has_val) {
      o.n = sb_parse_size(argv[++i], argv[0]);
    } else if (strcmp(a, "-q") == 0 && has_val) {
      o.q = atol(argv[++i]);
    } else if (extra_opt && a[0] == '-' && a[1] == extra_opt && a[2] == 0 &&
               has_val) {
      o.extra = atol(argv[++i]);
      o.have_extra = 1;
    } else {
      sb_usage(argv[0], extra_usage);
    }
  }
  if (o.n < 1 || o.q < 0 || o.conns < 1 || o.conns > SB_MAX_CONNS || o.size < 1 ||
      (o.workload == SB_PINGPONG && o.transport == SB_PIPE) ||
      (o.workload == SB_PUMP && o.conns != 1))
    sb_usage(argv[0], extra_usage);
  return o;
}

static inline void sb_set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  SB_CHECK(fl);
  SB_CHECK(fcntl(fd, F_SETFL, fl | O_NONBLOCK));
}

/* Makes `count` connected pairs: a[i] is the client (pingpong) or the
 * writer (pump), b[i] the server / the reader.  All non-blocking and
 * close-on-exec.  For a pipe, a is the write end and b the read end. */
static inline void sb_make_pairs(int transport, int count, int *a, int *b) {
  int i;
  if (transport == SB_PIPE) {
    int p[2];
    for (i = 0; i < count; i++) {
      SB_CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC));
      a[i] = p[1];
      b[i] = p[0];
    }
    return;
  }
  if (transport == SB_UNIX) {
    int sv[2];
    for (i = 0; i < count; i++) {
      SB_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                          0, sv));
      a[i] = sv[0];
      b[i] = sv[1];
    }
    return;
  }
  /* TCP over loopback: listen on an ephemeral port, connect, accept. */
  struct sockaddr_in sa;
  socklen_t len = sizeof sa;
  int one = 1;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  SB_CHECK(lfd);
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  SB_CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof sa));
  SB_CHECK(listen(lfd, SB_MAX_CONNS));
  SB_CHECK(getsockname(lfd, (struct sockaddr *)&sa, &len));
  for (i = 0; i < count; i++) {
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    SB_CHECK(c);
    SB_CHECK(connect(c, (struct sockaddr *)&sa, sizeof sa));
    int s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    SB_CHECK(s);
    SB_CHECK(setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    SB_CHECK(setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    sb_set_nonblock(c);
    sb_set_nonblock(s);
    a[i] = c;
    b[i] = s;
  }
  close(lfd);
}

/* ---- the bytes ------------------------------------------------------------ */

/* The pump sends, at stream offset o, the byte sb_pattern[o % SB_CHUNK].  The
 * array is two chunks long so that a write of up to SB_CHUNK bytes can
 * start at any offset: `sb_pattern + o % SB_CHUNK`. */
static unsigned char sb_pattern[2 * SB_CHUNK];

static inline void sb_pattern_init(void) {
  size_t i;
  for (i = 0; i < sizeof sb_pattern; i++) {
    size_t j = i % SB_CHUNK;
    sb_pattern[i] = (unsigned char)(j * 7 + (j >> 8) * 13 + (j >> 13));
  }
}

/* Checks `len` received bytes at stream offset `off` (pump -V). */
static inline void sb_pump_check(uint64_t off, const char *data, size_t len) {
  while (len > 0) {
    size_t k = len < SB_CHUNK ? len : SB_CHUNK;
    if (memcmp(data, sb_pattern + off % SB_CHUNK, k) != 0) {
      fprintf(stderr, "pump: wrong bytes near offset %llu\n",
              (unsigned long long)off);
      exit(1);
    }
    data += k;
    off += k;
    len -= k;
  }
}

/* Fills a ping-pong message for round `round` of connection `conn`
 * (with -V every round differs, so a stale or misrouted echo is caught). */
static inline void sb_fill_message(char *msg, size_t size, uint64_t round,
                                   int conn) {
  size_t i;
  size_t start = (size_t)((round * 977 + (uint64_t)conn * 131) % SB_CHUNK);
  for (i = 0; i < size; i += SB_CHUNK) {
    size_t k = size - i < SB_CHUNK ? size - i : SB_CHUNK;
    memcpy(msg + i, sb_pattern + start, k);
  }
}

/* ---- the result line -------------------------------------------------------- */

typedef struct sb_clock {
  double t, user, sys;
} sb_clock;

static inline sb_clock sb_clock_now(void) {
  sb_clock c;
  c.t = sb_now();
  c.user = sb_cpu(0);
  c.sys = sb_cpu(1);
  return c;
}

static inline const char *sb_transport_name(int t) {
  return t == SB_UNIX ? "unix" : t == SB_TCP ? "tcp" : "pipe";
}

static inline void sb_report(const char *impl, const sb_opts *o, sb_clock t0,
                             sb_clock t1, uint64_t done) {
  double secs = t1.t - t0.t;
  if (o->workload == SB_PINGPONG) {
    printf("{\"impl\": \"%s\", \"workload\": \"pingpong\", \"transport\": "
           "\"%s\", \"conns\": %d, \"size\": %zu, \"n\": %llu, \"verify\": %d, "
           "\"seconds\": %.6f, \"user\": %.3f, \"sys\": %.3f, "
           "\"rate\": %.1f, \"unit\": \"roundtrips/s\"}\n",
           impl, sb_transport_name(o->transport), o->conns, o->size,
           (unsigned long long)done, o->verify, secs, t1.user - t0.user,
           t1.sys - t0.sys, (double)done / secs);
  } else {
    printf("{\"impl\": \"%s\", \"workload\": \"pump\", \"transport\": \"%s\", "
           "\"n\": %llu, \"verify\": %d, \"q\": %ld, \"extra\": %ld, "
           "\"seconds\": %.6f, "
           "\"user\": %.3f, \"sys\": %.3f, \"rate\": %.1f, "
           "\"unit\": \"MB/s\"}\n",
           impl, sb_transport_name(o->transport), (unsigned long long)done,
           o->verify, o->q, o->extra, secs, t1.user - t0.user, t1.sys - t0.sys,
           (double)done / secs / 1e6);
  }
  fflush(stdout);
}

#endif /* STREAM_COMMON_H */
