/*
 * udp_client -- a raw-epoll UDP request/response load generator (no
 * event-loop library), the UDP counterpart of echo_client.
 *
 *   udp_client -a HOST:PORT | -u PATH  [-c 16] [-s 1024] [-d 2] [-w 0.5]
 *              [-t 200] [-V]
 *
 * Opens `c` flows, one connected UDP socket each (-a), or one UNIX-domain
 * datagram socket each (-u), bound to PATH.<pid>.<flow> so that the server
 * can answer, connected to PATH (the bound paths are removed at exit).  Each flow sends one
 * datagram of `s` bytes (at least 16: the first 8 carry the flow's sequence
 * number), waits for the echo of that datagram, and sends the next one (one
 * request in flight per flow).  An echo that does not come back within `t`
 * milliseconds counts as a loss and the flow sends a new datagram; an echo
 * of an older datagram is counted as late and ignored.  The first `w`
 * seconds are a warm-up; then it prints
 *
 *   {"event": "start"}
 *
 * (flushed) so that a server can start measuring, counts the requests
 * completed in the next `d` seconds, and prints
 *
 *   {"requests": N, "seconds": S, "rps": R, "flows": C, "size": B,
 *    "losses": L, "late": T, "send_errors": E}
 *
 * -V checks the content of every echo.  Exit status: 0, or 1 on a usage or
 * socket error (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct flow {
  int fd;
  uint64_t seq;       /* sequence number of the datagram in flight */
  double sent_at;
} flow;

static size_t msg_size = 1024;
static char *out_buf;
static char *in_buf;
static int verify;
static long send_errors;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "udp_client: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(void) {
  fprintf(stderr, "usage: udp_client (-a HOST:PORT | -u PATH) [-c FLOWS] "
                  "[-s BYTES] [-d SECONDS] [-w WARMUP_SECONDS] "
                  "[-t TIMEOUT_MS] [-V]\n");
  exit(1);
}

static int open_flow(const char *hostport) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  struct addrinfo hints, *res;
  if (colon == NULL || (size_t)(colon - hostport) >= sizeof host)
    usage();
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  int r = getaddrinfo(host, colon + 1, &hints, &res);
  if (r != 0) {
    fprintf(stderr, "udp_client: %s: %s\n", hostport, gai_strerror(r));
    exit(1);
  }
  int fd = socket(res->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
  if (fd < 0)
    die("socket");
  if (connect(fd, res->ai_addr, res->ai_addrlen) != 0)
    die("connect");
  freeaddrinfo(res);
  return fd;
}

static struct sockaddr_un unix_addr(const char *path) {
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof a.sun_path) {
    fprintf(stderr, "udp_client: path too long: %s\n", path);
    exit(1);
  }
  strcpy(a.sun_path, path);
  return a;
}

/* A UNIX-domain datagram flow: bound to `self` (so that replies can come
 * back), connected to `server`. */
static int open_unix_flow(const char *server, const char *self) {
  struct sockaddr_un to = unix_addr(server), me = unix_addr(self);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    die("socket");
  unlink(self);
  if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0)
    die("bind");
  if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0)
    die("connect");
  return fd;
}

static void send_request(flow *f) {
  f->seq++;
  memcpy(out_buf, &f->seq, sizeof f->seq);
  f->sent_at = now_s();
  ssize_t n;
  do
    n = send(f->fd, out_buf, msg_size, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    /* ENOBUFS, ECONNREFUSED (no server yet): the timeout resends. */
    send_errors++;
  }
}

int main(int argc, char **argv) {
  const char *addr = NULL, *path = NULL;
  int nflows = 16, opt;
  double duration = 2.0, warmup = 0.5, timeout = 0.2;
  while ((opt = getopt(argc, argv, "a:u:c:s:d:w:t:V")) != -1) {
    switch (opt) {
    case 'a': addr = optarg; break;
    case 'u': path = optarg; break;
    case 'c': nflows = atoi(optarg); break;
    case 's': msg_size = (size_t)atol(optarg); break;
    case 'd': duration = atof(optarg); break;
    case 'w': warmup = atof(optarg); break;
    case 't': timeout = atof(optarg) / 1000.0; break;
    case 'V': verify = 1; break;
    default: usage();
    }
  }
  if ((addr == NULL) == (path == NULL) || nflows < 1 || msg_size < 16 || msg_size > 65507 ||
      duration <= 0 || warmup < 0 || timeout <= 0)
    usage();
  out_buf = malloc(msg_size);
  in_buf = malloc(65536);
  flow *flows = calloc((size_t)nflows, sizeof *flows);
  char (*self_paths)[128] = calloc((size_t)nflows, sizeof *self_paths);
  if (out_buf == NULL || in_buf == NULL || flows == NULL || self_paths == NULL)
    die("malloc");
  for (size_t i = 0; i < msg_size; i++)
    out_buf[i] = (char)('a' + i % 26);

  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0)
    die("epoll_create1");
  for (int i = 0; i < nflows; i++) {
    if (path != NULL) {
      snprintf(self_paths[i], sizeof self_paths[i], "%s.%d.%d", path,
               (int)getpid(), i);
      flows[i].fd = open_unix_flow(path, self_paths[i]);
    } else {
      flows[i].fd = open_flow(addr);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &flows[i]};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, flows[i].fd, &ev) != 0)
      die("epoll_ctl");
  }
  for (int i = 0; i < nflows; i++)
    send_request(&flows[i]);

  double t0 = now_s(), start = t0 + warmup, end = start + duration;
  int measuring = 0;
  long requests = 0, losses = 0, late = 0;
  struct epoll_event events[64];
  for (;;) {
    double now = now_s();
    if (!measuring && now >= start) {
      measuring = 1;
      requests = losses = late = 0;
      send_errors = 0;
      start = now;
      end = start + duration;
      printf("{\"event\": \"start\"}\n");
      fflush(stdout);
    }
    if (measuring && now >= end)
      break;
    /* Retransmit what timed out (checked at most every few ms). */
    for (int i = 0; i < nflows; i++) {
      if (now - flows[i].sent_at >= timeout) {
        losses++;
        send_request(&flows[i]);
      }
    }
    int n = epoll_wait(epfd, events, 64, 5);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait");
    }
    for (int e = 0; e < n; e++) {
      flow *f = events[e].data.ptr;
      for (;;) {
        ssize_t got = recv(f->fd, in_buf, 65536, 0);
        if (got < 0) {
          if (errno == EINTR)
            continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
          if (errno == ECONNREFUSED) { /* server not up yet */
            send_errors++;
            continue;
          }
          die("recv");
        }
        uint64_t seq;
        memcpy(&seq, in_buf, sizeof seq);
        if ((size_t)got != msg_size || seq != f->seq) {
          late++;
          continue;
        }
        if (verify && memcmp(in_buf + 8, out_buf + 8, msg_size - 8) != 0) {
          fprintf(stderr, "udp_client: echo content differs\n");
          return 1;
        }
        requests++;
        send_request(f);
      }
    }
  }
  double secs = now_s() - start;
  printf("{\"requests\": %ld, \"seconds\": %.6f, \"rps\": %.1f, "
         "\"flows\": %d, \"size\": %zu, \"losses\": %ld, \"late\": %ld, "
         "\"send_errors\": %ld}\n",
         requests, secs, (double)requests / secs, nflows, msg_size, losses,
         late, send_errors);
  fflush(stdout);
  for (int i = 0; i < nflows; i++) {
    close(flows[i].fd);
    if (path != NULL)
      unlink(self_paths[i]);
  }
  close(epfd);
  free(self_paths);
  free(flows);
  free(in_buf);
  free(out_buf);
  return 0;
}
