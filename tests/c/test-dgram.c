/* The datagram transport (ul_dgram_*): asyncio's datagram transport in C.
 *
 * The sockets are UDP sockets on the loopback interface and UNIX-domain
 * datagram sockets (socketpairs and bound paths); a peer is either another
 * transport on the same loop or a raw socket driven by the test.  Every
 * protocol callback is recorded in a trace string, one letter per event
 * (consecutive data events merged):
 *
 *   M connection_made   D datagram_received   X error_received
 *   L connection_lost   P pause_writing       R resume_writing
 *
 * and the recorder checks the life-cycle rules: connection_made first and
 * once, nothing after connection_lost. */
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

/* ------------------------------------------------------------------------ */
/* Recorder                                                                 */

typedef struct rec {
  ul_loop *loop;
  ul_dgram *dgram;
  char trace[64];
  size_t ntrace;
  int lost;          /* connection_lost has run */
  int lost_err;
  int last_error;    /* the last error_received */
  int nerrors;
  int ndatagrams;
  size_t nbytes;
  char last[256 * 1024];   /* the last datagram */
  size_t last_len;
  struct sockaddr_storage last_addr;
  socklen_t last_addrlen;
  int echo;          /* send every datagram back to its sender */
  int stop_after;    /* stop the loop after this many datagrams (0: never) */
  int close_in_received;  /* ul_dgram_close in the first datagram_received */
  int stop_on_lost;
  int stop_on_error;
  int stop_on_resume;
  int abort_on_error;   /* ul_dgram_abort in error_received */
  int abort_on_resume;  /* ul_dgram_abort in resume_writing */
} rec;

static void trace(rec *r, char c) {
  ASSERT(!r->lost);
  if (c == 'M')
    ASSERT_EQ(0, r->ntrace);
  else if (!(c == 'L' && r->lost_err == -ECANCELED)) /* loop closed first */
    ASSERT(r->ntrace > 0 && r->trace[0] == 'M');
  if (c == 'D' && r->ntrace > 0 && r->trace[r->ntrace - 1] == 'D')
    return;
  ASSERT(r->ntrace + 1 < sizeof r->trace);
  r->trace[r->ntrace++] = c;
  r->trace[r->ntrace] = '\0';
}

static void on_made(ul_dgram *d, void *ctx) {
  rec *r = ctx;
  ASSERT_PTR_EQ(r->dgram, d);
  trace(r, 'M');
}

static void on_datagram(ul_dgram *d, const char *data, size_t len,
                        const struct sockaddr *addr, socklen_t addrlen,
                        void *ctx) {
  rec *r = ctx;
  trace(r, 'D');
  r->ndatagrams++;
  r->nbytes += len;
  ASSERT_LE(len, sizeof r->last);
  memcpy(r->last, data, len);
  r->last_len = len;
  ASSERT_LE(addrlen, sizeof r->last_addr);
  memcpy(&r->last_addr, addr, addrlen);
  r->last_addrlen = addrlen;
  if (r->echo)
    ASSERT_OK(ul_dgram_sendto(d, data, len, addr, addrlen));
  if (r->close_in_received) {
    r->close_in_received = 0;
    ASSERT_OK(ul_dgram_close(d));
  }
  if (r->stop_after && r->ndatagrams == r->stop_after)
    ul_loop_stop(r->loop);
}

static void on_error(ul_dgram *d, int err, void *ctx) {
  rec *r = ctx;
  trace(r, 'X');
  ASSERT_LT(err, 0);
  r->last_error = err;
  r->nerrors++;
  if (r->abort_on_error)
    ASSERT_OK(ul_dgram_abort(d));
  if (r->stop_on_error)
    ul_loop_stop(r->loop);
}

static void on_lost(ul_dgram *d, int err, void *ctx) {
  rec *r = ctx;
  ASSERT_PTR_EQ(r->dgram, d);
  r->lost_err = err; /* before trace(): -ECANCELED may come without 'M' */
  trace(r, 'L');
  r->lost = 1;
  if (r->stop_on_lost)
    ul_loop_stop(r->loop);
}

static void on_pause(ul_dgram *d, void *ctx) {
  (void)d;
  trace(ctx, 'P');
}

static void on_resume(ul_dgram *d, void *ctx) {
  rec *r = ctx;
  trace(r, 'R');
  if (r->abort_on_resume)
    ASSERT_OK(ul_dgram_abort(d));
  if (r->stop_on_resume)
    ul_loop_stop(r->loop);
}

static const ul_dgram_protocol proto = {
    .connection_made = on_made,
    .datagram_received = on_datagram,
    .error_received = on_error,
    .connection_lost = on_lost,
    .pause_writing = on_pause,
    .resume_writing = on_resume,
};

static void open_rec(ul_loop *loop, int fd, rec *r) {
  memset(r, 0, sizeof *r);
  r->loop = loop;
  ASSERT_OK(ul_dgram_open(loop, fd, &proto, r, &r->dgram));
}

/* Runs the loop until the recorder has lost its connection. */
static void run_until_lost(ul_loop *loop, rec *r) {
  r->stop_on_lost = 1;
  for (int i = 0; i < 100 && !r->lost; i++)
    ASSERT_OK(ul_loop_run(loop));
  ASSERT(r->lost);
}

/* ------------------------------------------------------------------------ */
/* Sockets                                                                  */

static struct sockaddr_in loopback4(uint16_t port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

/* A UDP socket bound to 127.0.0.1, its address in *addr. */
static int udp_bound(struct sockaddr_in *addr) {
  struct sockaddr_in any = loopback4(0);
  int fd = ul_dgram_socket(AF_INET, (struct sockaddr *)&any, sizeof any, NULL,
                           0, 0);
  ASSERT_GE(fd, 0);
  socklen_t len = sizeof *addr;
  ASSERT_OK(getsockname(fd, (struct sockaddr *)addr, &len));
  return fd;
}

/* A UNIX-domain datagram socketpair; sv[1] (the raw peer) is
 * non-blocking. */
static void dgram_socketpair(int sv[2]) {
  ASSERT_OK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv));
  ASSERT_OK(fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK));
}

/* Fills sv[0]'s peer queue with `size`-byte datagrams through the
 * transport until one is queued; returns how many went out at once. */
static int fill_until_queued(ul_dgram *d, size_t size) {
  static char buf[4096];
  ASSERT_LE(size, sizeof buf);
  int n = 0;
  while (ul_dgram_get_write_buffer_size(d) == 0) {
    ASSERT_OK(ul_dgram_sendto(d, buf, size, NULL, 0));
    n++;
    ASSERT_LT(n, 100000);
  }
  return n;
}

/* Reads and discards every datagram waiting on fd; returns the count. */
static int drain(int fd) {
  char buf[4096];
  int n = 0;
  while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) >= 0)
    n++;
  return n;
}

static struct sockaddr_un unix_addr(const char *dir, const char *name,
                                    socklen_t *len) {
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "%s/%s", dir, name);
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                     strlen(a.sun_path) + 1);
  return a;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */

/* A connected client and an unconnected echo server on the same loop. */
TEST_IMPL(dgram_udp_echo) {
  ul_loop *loop = test_loop_new();
  struct sockaddr_in saddr;
  int sfd = udp_bound(&saddr);
  struct sockaddr_in any = loopback4(0);
  int cfd = ul_dgram_socket(AF_UNSPEC, (struct sockaddr *)&any, sizeof any,
                            (struct sockaddr *)&saddr, sizeof saddr, 0);
  ASSERT_GE(cfd, 0);
  struct sockaddr_in caddr;
  socklen_t clen = sizeof caddr;
  ASSERT_OK(getsockname(cfd, (struct sockaddr *)&caddr, &clen));
  rec server, client;
  open_rec(loop, sfd, &server);
  open_rec(loop, cfd, &client);
  server.echo = 1;
  client.stop_after = 3;
  /* Connected: the peer is known, sends need no address. */
  struct sockaddr_storage peer;
  socklen_t plen;
  ASSERT_OK(ul_dgram_get_peer(client.dgram, &peer, &plen));
  ASSERT_EQ(sizeof saddr, plen);
  ASSERT_EQ(-ENOTCONN, ul_dgram_get_peer(server.dgram, &peer, &plen));
  /* Sent at once, before connection_made even ran. */
  ASSERT_OK(ul_dgram_sendto(client.dgram, "one", 3, NULL, 0));
  ASSERT_OK(ul_dgram_sendto(client.dgram, "two", 3,
                            (struct sockaddr *)&saddr, sizeof saddr));
  ASSERT_OK(ul_dgram_sendto(client.dgram, "", 0, NULL, 0));
  ASSERT_EQ(0, ul_dgram_get_write_buffer_size(client.dgram));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(3, client.ndatagrams);
  ASSERT_EQ(3, server.ndatagrams);
  ASSERT_EQ(6, client.nbytes);
  ASSERT_EQ(0, client.last_len);   /* the empty datagram came back last */
  /* The server saw the client's address; the client the server's. */
  ASSERT_EQ(sizeof caddr, server.last_addrlen);
  ASSERT_OK(memcmp(&caddr, &server.last_addr, sizeof caddr));
  ASSERT_OK(memcmp(&saddr, &client.last_addr, sizeof saddr));
  ASSERT_STR_EQ("MD", client.trace);
  ASSERT_OK(ul_dgram_close(client.dgram));
  ASSERT_OK(ul_dgram_close(server.dgram));
  ASSERT(ul_dgram_is_closing(server.dgram));
  run_until_lost(loop, &client);
  run_until_lost(loop, &server);
  ASSERT_STR_EQ("MDL", server.trace);
  ASSERT_EQ(0, server.lost_err);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(dgram_udp6_echo) {
  struct sockaddr_in6 any;
  memset(&any, 0, sizeof any);
  any.sin6_family = AF_INET6;
  any.sin6_addr = in6addr_loopback;
  int sfd = ul_dgram_socket(AF_INET6, (struct sockaddr *)&any, sizeof any,
                            NULL, 0, UL_DGRAM_IPV6ONLY);
  if (sfd == -EADDRNOTAVAIL || sfd == -EAFNOSUPPORT)
    RETURN_SKIP("no IPv6 loopback on this machine");
  ASSERT_GE(sfd, 0);
  int v6only = 0;
  socklen_t olen = sizeof v6only;
  ASSERT_OK(getsockopt(sfd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &olen));
  ASSERT_EQ(1, v6only);
  struct sockaddr_in6 saddr;
  socklen_t slen = sizeof saddr;
  ASSERT_OK(getsockname(sfd, (struct sockaddr *)&saddr, &slen));
  int cfd = ul_dgram_socket(AF_INET6, NULL, 0, (struct sockaddr *)&saddr,
                            slen, 0);
  ASSERT_GE(cfd, 0);
  ul_loop *loop = test_loop_new();
  rec server, client;
  open_rec(loop, sfd, &server);
  open_rec(loop, cfd, &client);
  server.echo = 1;
  client.stop_after = 1;
  ASSERT_OK(ul_dgram_sendto(client.dgram, "six", 3, NULL, 0));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(3, client.last_len);
  ASSERT_OK(memcmp("six", client.last, 3));
  ASSERT_EQ(AF_INET6, server.last_addr.ss_family);
  ASSERT_EQ(sizeof(struct sockaddr_in6), server.last_addrlen);
  ul_dgram_abort(client.dgram);
  ul_dgram_abort(server.dgram);
  run_until_lost(loop, &client);
  run_until_lost(loop, &server);
  CLOSE_LOOP(loop);
  return 0;
}

/* A 65,507-byte UDP datagram (the largest IPv4 payload) arrives whole, and
 * one byte more is refused with -EMSGSIZE without ending the transport. */
TEST_IMPL(dgram_large_datagram) {
  ul_loop *loop = test_loop_new();
  struct sockaddr_in saddr;
  int sfd = udp_bound(&saddr);
  int cfd = ul_dgram_socket(AF_INET, NULL, 0, (struct sockaddr *)&saddr,
                            sizeof saddr, 0);
  ASSERT_GE(cfd, 0);
  int big = 1 << 20;
  ASSERT_OK(setsockopt(sfd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big));
  rec server, client;
  open_rec(loop, sfd, &server);
  open_rec(loop, cfd, &client);
  server.stop_after = 2;
  size_t len = 65507;
  char *buf = malloc(len + 1);
  ASSERT_NOT_NULL(buf);
  for (size_t i = 0; i <= len; i++)
    buf[i] = (char)(i * 7 + 3);
  ASSERT_EQ(-EMSGSIZE, ul_dgram_sendto(client.dgram, buf, len + 1, NULL, 0));
  ASSERT_OK(ul_dgram_sendto(client.dgram, buf, len, NULL, 0));
  ASSERT_OK(ul_dgram_sendto(client.dgram, buf, 10, NULL, 0));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(2, server.ndatagrams);
  ASSERT_EQ(len + 10, server.nbytes);
  ASSERT_EQ(10, server.last_len);
  ASSERT_OK(memcmp(buf, server.last, 10));
  ASSERT_EQ(0, client.nerrors);   /* EMSGSIZE was returned, not reported */
  ul_dgram_close(client.dgram);
  ul_dgram_close(server.dgram);
  run_until_lost(loop, &client);
  run_until_lost(loop, &server);
  free(buf);
  CLOSE_LOOP(loop);
  return 0;
}

/* A UNIX-domain datagram larger than a UDP one (128 KiB) arrives whole. */
TEST_IMPL(dgram_unix_large_datagram) {
  ul_loop *loop = test_loop_new();
  int sv[2];
  ASSERT_OK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv));
  int size = 1 << 20;
  ASSERT_OK(setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof size));
  rec r;
  open_rec(loop, sv[0], &r);
  r.stop_after = 1;
  size_t len = 128 * 1024;
  char *buf = malloc(len);
  ASSERT_NOT_NULL(buf);
  for (size_t i = 0; i < len; i++)
    buf[i] = (char)(i * 13 + 1);
  ASSERT_EQ((ssize_t)len, send(sv[1], buf, len, 0));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(len, r.last_len);
  ASSERT_OK(memcmp(buf, r.last, len));
  ul_dgram_close(r.dgram);
  run_until_lost(loop, &r);
  test_close(sv[1]);
  free(buf);
  CLOSE_LOOP(loop);
  return 0;
}

/* Nothing listens at the peer: the ICMP port-unreachable reaches
 * error_received as -ECONNREFUSED, and the transport stays open. */
TEST_IMPL(dgram_unreachable_peer) {
  ul_loop *loop = test_loop_new();
  struct sockaddr_in dead;
  int tmp = udp_bound(&dead);
  test_close(tmp);   /* the port is now closed */
  int fd = ul_dgram_socket(AF_INET, NULL, 0, (struct sockaddr *)&dead,
                           sizeof dead, 0);
  ASSERT_GE(fd, 0);
  rec r;
  open_rec(loop, fd, &r);
  r.stop_on_error = 1;
  ASSERT_OK(ul_dgram_sendto(r.dgram, "anyone?", 7, NULL, 0));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(-ECONNREFUSED, r.last_error);
  ASSERT_STR_EQ("MX", r.trace);
  ASSERT(!r.lost);
  ASSERT(!ul_dgram_is_closing(r.dgram));
  /* Still usable: the next send goes out (and is refused again). */
  ASSERT_OK(ul_dgram_sendto(r.dgram, "again", 5, NULL, 0));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(2, r.nerrors);
  ul_dgram_close(r.dgram);
  run_until_lost(loop, &r);
  ASSERT_EQ(0, r.lost_err);
  ASSERT_STR_EQ("MXXL", r.trace);
  CLOSE_LOOP(loop);
  return 0;
}

/* The peer's socket closes while datagrams wait in the queue: each queued
 * datagram that cannot go out is an error_received, not connection_lost;
 * close() then completes. */
TEST_IMPL(dgram_peer_closed_mid_send) {
  ul_loop *loop = test_loop_new();
  int sv[2];
  dgram_socketpair(sv);
  rec r;
  open_rec(loop, sv[0], &r);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  fill_until_queued(r.dgram, 100);
  ASSERT_OK(ul_dgram_sendto(r.dgram, "b", 1, NULL, 0));
  ASSERT_EQ(101, ul_dgram_get_write_buffer_size(r.dgram));
  test_close(sv[1]);
  ASSERT_OK(ul_dgram_close(r.dgram));
  run_until_lost(loop, &r);
  ASSERT_EQ(2, r.nerrors);   /* ECONNREFUSED, then ENOTCONN */
  ASSERT_EQ(-ENOTCONN, r.last_error);
  ASSERT_STR_EQ("MXXL", r.trace);
  ASSERT_EQ(0, r.lost_err);
  CLOSE_LOOP(loop);
  return 0;
}

/* error_received and resume_writing may abort the transport while it is
 * flushing its queue: nothing more is sent or reported. */
TEST_IMPL(dgram_abort_in_flush_callbacks) {
  ul_loop *loop = test_loop_new();
  for (int in_resume = 0; in_resume <= 1; in_resume++) {
    int sv[2];
    dgram_socketpair(sv);
    rec r;
    open_rec(loop, sv[0], &r);
    ASSERT_OK(ul_loop_run_once(loop, 0));
    ASSERT_OK(ul_dgram_set_write_buffer_limits(r.dgram, 1000, 100));
    fill_until_queued(r.dgram, 600);
    ASSERT_OK(ul_dgram_sendto(r.dgram, r.last, 600, NULL, 0));
    ASSERT_OK(ul_dgram_sendto(r.dgram, r.last, 600, NULL, 0));
    ASSERT_STR_EQ("MP", r.trace);
    if (in_resume) {
      r.abort_on_resume = 1;
      r.stop_on_lost = 1;
      for (int i = 0; i < 50 && !r.lost; i++) {
        drain(sv[1]);
        ASSERT_OK(ul_loop_run_once(loop, 1));
      }
      ASSERT_STR_EQ("MPRL", r.trace);
    } else {
      r.abort_on_error = 1;
      test_close(sv[1]);   /* the next send from the queue fails */
      run_until_lost(loop, &r);
      ASSERT_STR_EQ("MPXL", r.trace);
      ASSERT_EQ(1, r.nerrors);
    }
    ASSERT_EQ(0, r.lost_err);
    if (in_resume)
      test_close(sv[1]);
  }
  CLOSE_LOOP(loop);
  return 0;
}

/* Unconnected UNIX-domain sockets bound to paths: the receiver sees the
 * sender's path. */
TEST_IMPL(dgram_unix_paths) {
  char dir[] = "/tmp/ul-dgram-XXXXXX";
  ASSERT_NOT_NULL(mkdtemp(dir));
  socklen_t alen, blen;
  struct sockaddr_un a = unix_addr(dir, "a", &alen);
  struct sockaddr_un b = unix_addr(dir, "b", &blen);
  int afd = ul_dgram_socket(AF_UNIX, (struct sockaddr *)&a, alen, NULL, 0, 0);
  int bfd = ul_dgram_socket(AF_UNSPEC, (struct sockaddr *)&b, blen, NULL, 0,
                            0);
  ASSERT_GE(afd, 0);
  ASSERT_GE(bfd, 0);
  /* The path is taken now. */
  ASSERT_EQ(-EADDRINUSE,
            ul_dgram_socket(AF_UNIX, (struct sockaddr *)&b, blen, NULL, 0, 0));
  ul_loop *loop = test_loop_new();
  rec ra, rb;
  open_rec(loop, afd, &ra);
  open_rec(loop, bfd, &rb);
  rb.echo = 1;
  ra.stop_after = 1;
  ASSERT_EQ(-EDESTADDRREQ, ul_dgram_sendto(ra.dgram, "hi", 2, NULL, 0));
  ASSERT_OK(ul_dgram_sendto(ra.dgram, "hi", 2, (struct sockaddr *)&b, blen));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(2, ra.last_len);
  ASSERT_EQ(AF_UNIX, rb.last_addr.ss_family);
  ASSERT_STR_EQ(a.sun_path, ((struct sockaddr_un *)&rb.last_addr)->sun_path);
  ASSERT_STR_EQ(b.sun_path, ((struct sockaddr_un *)&ra.last_addr)->sun_path);
  /* A path with no socket: the send's error comes back at once. */
  socklen_t clen;
  struct sockaddr_un c = unix_addr(dir, "nobody", &clen);
  ASSERT_EQ(-ENOENT,
            ul_dgram_sendto(ra.dgram, "x", 1, (struct sockaddr *)&c, clen));
  ASSERT_EQ(-ENOENT, ul_dgram_socket(AF_UNIX, NULL, 0, (struct sockaddr *)&c,
                                     clen, 0));
  ul_dgram_close(ra.dgram);
  ul_dgram_close(rb.dgram);
  run_until_lost(loop, &ra);
  run_until_lost(loop, &rb);
  CLOSE_LOOP(loop);
  ASSERT_OK(unlink(a.sun_path));
  ASSERT_OK(unlink(b.sun_path));
  ASSERT_OK(rmdir(dir));
  return 0;
}

/* One wake-up takes every datagram queued (recvmmsg: 16 UDP datagrams a
 * batch), in order. */
TEST_IMPL(dgram_batch_in_order) {
  ul_loop *loop = test_loop_new();
  struct sockaddr_in saddr;
  int sfd = udp_bound(&saddr);
  int peer = ul_dgram_socket(AF_INET, NULL, 0, (struct sockaddr *)&saddr,
                             sizeof saddr, 0);
  ASSERT_GE(peer, 0);
  rec r;
  open_rec(loop, sfd, &r);
  ASSERT_OK(ul_loop_run_once(loop, 0));   /* connection_made */
  for (int i = 0; i < 40; i++) {
    char c = (char)('A' + i);
    ASSERT_EQ(1, send(peer, &c, 1, 0));
  }
  int iterations = 0;
  while (r.ndatagrams < 40) {
    ASSERT_OK(ul_loop_run_once(loop, 1));
    iterations++;
    ASSERT_LE(iterations, 3);
    ASSERT_EQ('A' + r.ndatagrams - 1, r.last[0]);
  }
  ul_dgram_close(r.dgram);
  run_until_lost(loop, &r);
  test_close(peer);
  CLOSE_LOOP(loop);
  return 0;
}

/* Closing in datagram_received drops the rest of the batch. */
TEST_IMPL(dgram_close_in_datagram_received) {
  ul_loop *loop = test_loop_new();
  int sv[2];
  dgram_socketpair(sv);
  rec r;
  open_rec(loop, sv[0], &r);
  r.close_in_received = 1;
  ASSERT_EQ(1, send(sv[1], "1", 1, 0));
  ASSERT_EQ(1, send(sv[1], "2", 1, 0));
  run_until_lost(loop, &r);
  ASSERT_EQ(1, r.ndatagrams);
  ASSERT_STR_EQ("MDL", r.trace);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* pause_writing above the high-water mark, resume_writing at the low one;
 * get_write_buffer_size counts the payload bytes queued. */
TEST_IMPL(dgram_water_marks) {
  ul_loop *loop = test_loop_new();
  int sv[2];
  dgram_socketpair(sv);
  rec r;
  open_rec(loop, sv[0], &r);
  size_t low, high;
  ul_dgram_get_write_buffer_limits(r.dgram, &low, &high);
  ASSERT_EQ(64 * 1024, high);
  ASSERT_EQ(16 * 1024, low);
  ASSERT_EQ(-EINVAL, ul_dgram_set_write_buffer_limits(r.dgram, 10, 20));
  ASSERT_OK(ul_dgram_set_write_buffer_limits(r.dgram, -1, 1000));
  ul_dgram_get_write_buffer_limits(r.dgram, &low, &high);
  ASSERT_EQ(4000, high);
  ASSERT_EQ(1000, low);
  ASSERT_OK(ul_loop_run_once(loop, 0));   /* connection_made */
  fill_until_queued(r.dgram, 1000);
  for (int i = 0; i < 3; i++)
    ASSERT_OK(ul_dgram_sendto(r.dgram, r.last, 1000, NULL, 0));
  ASSERT_EQ(4000, ul_dgram_get_write_buffer_size(r.dgram));
  ASSERT_STR_EQ("M", r.trace);      /* not above 4000 yet */
  ASSERT_OK(ul_dgram_sendto(r.dgram, r.last, 1, NULL, 0));
  ASSERT_STR_EQ("MP", r.trace);     /* inside the call that crossed it */
  ASSERT_OK(ul_dgram_sendto(r.dgram, r.last, 1000, NULL, 0));
  ASSERT_STR_EQ("MP", r.trace);     /* once */
  /* The peer reads: the queue flushes and resume_writing comes. */
  r.stop_on_resume = 1;
  for (int i = 0; i < 50 && strcmp(r.trace, "MPR") != 0; i++) {
    drain(sv[1]);
    ASSERT_OK(ul_loop_run_once(loop, 1));
  }
  ASSERT_STR_EQ("MPR", r.trace);
  ASSERT_LE(ul_dgram_get_write_buffer_size(r.dgram), 1000);
  /* Lowering the high mark below what is queued pauses at once. */
  fill_until_queued(r.dgram, 1000);
  ASSERT_OK(ul_dgram_sendto(r.dgram, r.last, 1000, NULL, 0));
  ASSERT_OK(ul_dgram_set_write_buffer_limits(r.dgram, 100, 0));
  ASSERT_STR_EQ("MPRP", r.trace);
  ul_dgram_abort(r.dgram);
  ASSERT_EQ(0, ul_dgram_get_write_buffer_size(r.dgram));
  run_until_lost(loop, &r);
  ASSERT_STR_EQ("MPRPL", r.trace);  /* no resume_writing for an abort */
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* close() sends every queued datagram first; abort() drops them. */
TEST_IMPL(dgram_close_flushes_abort_drops) {
  ul_loop *loop = test_loop_new();
  for (int aborting = 0; aborting <= 1; aborting++) {
    int sv[2];
    dgram_socketpair(sv);
    rec r;
    open_rec(loop, sv[0], &r);
    int sent = fill_until_queued(r.dgram, 500);
    for (int i = 0; i < 4; i++)
      ASSERT_OK(ul_dgram_sendto(r.dgram, r.last, 500, NULL, 0));
    ASSERT_EQ(2500, ul_dgram_get_write_buffer_size(r.dgram));
    if (aborting)
      ASSERT_OK(ul_dgram_abort(r.dgram));
    else
      ASSERT_OK(ul_dgram_close(r.dgram));
    ASSERT_EQ(-EPIPE, ul_dgram_sendto(r.dgram, "x", 1, NULL, 0));
    ASSERT_OK(ul_dgram_close(r.dgram));   /* again: nothing */
    int got = 0;
    r.stop_on_lost = 1;
    for (int i = 0; i < 100 && !r.lost; i++) {
      got += drain(sv[1]);
      ASSERT_OK(ul_loop_run_once(loop, 1));
    }
    ASSERT(r.lost);
    got += drain(sv[1]);
    ASSERT_EQ(aborting ? sent - 1 : sent + 4, got);
    ASSERT_STR_EQ("ML", r.trace);
    test_close(sv[1]);
  }
  CLOSE_LOOP(loop);
  return 0;
}

/* The loop closed with transports open: connection_lost(-ECANCELED) for
 * both, also for the one whose connection_made had not run (its only
 * callback, so that its owner can release what it holds); no leak. */
TEST_IMPL(dgram_loop_close_cancels) {
  int fds = test_count_fds();
  ul_loop *loop = test_loop_new();
  int sv[2];
  dgram_socketpair(sv);
  rec a, b;
  open_rec(loop, sv[0], &a);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  fill_until_queued(a.dgram, 1000);   /* a queue to free */
  open_rec(loop, sv[1], &b);
  CLOSE_LOOP(loop);
  ASSERT_STR_EQ("ML", a.trace);
  ASSERT_EQ(-ECANCELED, a.lost_err);
  ASSERT_STR_EQ("L", b.trace);
  ASSERT_EQ(-ECANCELED, b.lost_err);
  ASSERT_EQ(fds, test_count_fds());
  return 0;
}

/* Bad input gets an error, never a crash; an fd given to ul_dgram_open is
 * closed when it fails. */
TEST_IMPL(dgram_invalid_args) {
  ul_loop *loop = test_loop_new();
  ul_dgram *d = NULL;
  int sv[2];
  dgram_socketpair(sv);
  ASSERT_EQ(-EINVAL, ul_dgram_open(NULL, sv[0], &proto, NULL, &d));
  ASSERT(!test_fd_is_open(sv[0]));
  test_close(sv[1]);
  ASSERT_EQ(-EBADF, ul_dgram_open(loop, -1, &proto, NULL, &d));
  ul_dgram_protocol no_data = proto;
  no_data.datagram_received = NULL;
  dgram_socketpair(sv);
  ASSERT_EQ(-EINVAL, ul_dgram_open(loop, sv[0], &no_data, NULL, &d));
  ASSERT(!test_fd_is_open(sv[0]));
  test_close(sv[1]);
  /* Not a datagram socket, not a socket. */
  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  ASSERT_EQ(-EINVAL, ul_dgram_open(loop, sv[0], &proto, NULL, &d));
  ASSERT(!test_fd_is_open(sv[0]));
  test_close(sv[1]);
  int p[2];
  test_pipe(p);
  ASSERT_EQ(-ENOTSOCK, ul_dgram_open(loop, p[0], &proto, NULL, &d));
  ASSERT(!test_fd_is_open(p[0]));
  test_close(p[1]);
  ASSERT_NULL(d);
  /* NULL transports. */
  ASSERT_EQ(-EINVAL, ul_dgram_sendto(NULL, "x", 1, NULL, 0));
  ASSERT_EQ(-EINVAL, ul_dgram_close(NULL));
  ASSERT_EQ(-EINVAL, ul_dgram_abort(NULL));
  ASSERT_EQ(-EINVAL, ul_dgram_set_write_buffer_limits(NULL, 1, 1));
  ASSERT_EQ(-EINVAL, ul_dgram_release_fd(NULL));
  ASSERT_EQ(-1, ul_dgram_fileno(NULL));
  ASSERT_EQ(0, ul_dgram_get_write_buffer_size(NULL));
  ASSERT_EQ(0, ul_dgram_is_closing(NULL));
  /* sendto's checks. */
  struct sockaddr_in saddr;
  int sfd = udp_bound(&saddr);
  rec r;
  open_rec(loop, sfd, &r);
  ASSERT_EQ(-EINVAL, ul_dgram_sendto(r.dgram, NULL, 1, NULL, 0));
  ASSERT_EQ(-EINVAL, ul_dgram_sendto(r.dgram, "x", 1,
                                     (struct sockaddr *)&saddr, 0));
  ASSERT_EQ(-EINVAL, ul_dgram_sendto(r.dgram, "x", 1, NULL, 16));
  ASSERT_EQ(-EDESTADDRREQ, ul_dgram_sendto(r.dgram, "x", 1, NULL, 0));
  int cfd = ul_dgram_socket(AF_INET, NULL, 0, (struct sockaddr *)&saddr,
                            sizeof saddr, 0);
  rec c;
  open_rec(loop, cfd, &c);
  struct sockaddr_in other = loopback4(9);
  ASSERT_EQ(-EISCONN, ul_dgram_sendto(c.dgram, "x", 1,
                                      (struct sockaddr *)&other,
                                      sizeof other));
  /* ul_dgram_socket's checks. */
  struct sockaddr_in any = loopback4(0);
  ASSERT_EQ(-EINVAL, ul_dgram_socket(AF_UNSPEC, NULL, 0, NULL, 0, 0));
  ASSERT_EQ(-EINVAL, ul_dgram_socket(AF_INET6, (struct sockaddr *)&any,
                                     sizeof any, NULL, 0, 0));
  ASSERT_EQ(-EINVAL, ul_dgram_socket(AF_INET, (struct sockaddr *)&any, 4,
                                     NULL, 0, 0));
  ASSERT_EQ(-EINVAL, ul_dgram_socket(AF_INET, NULL, 0, NULL, 0, 64));
  ASSERT_EQ(-EINVAL, ul_dgram_socket(AF_UNIX, NULL, 0, NULL, 0,
                                     UL_DGRAM_REUSEPORT));
  ASSERT_EQ(-EADDRINUSE, ul_dgram_socket(AF_INET, (struct sockaddr *)&saddr,
                                         sizeof saddr, NULL, 0, 0));
  ul_dgram_close(r.dgram);
  ul_dgram_close(c.dgram);
  run_until_lost(loop, &r);
  run_until_lost(loop, &c);
  CLOSE_LOOP(loop);
  return 0;
}

/* The socket helper's options: SO_BROADCAST lets a send reach the
 * broadcast address (EACCES without it); SO_REUSEPORT lets two sockets
 * share a port. */
TEST_IMPL(dgram_socket_options) {
  ul_loop *loop = test_loop_new();
  struct sockaddr_in any = loopback4(0);
  int plain = ul_dgram_socket(AF_INET, (struct sockaddr *)&any, sizeof any,
                              NULL, 0, 0);
  int bcast = ul_dgram_socket(AF_INET, (struct sockaddr *)&any, sizeof any,
                              NULL, 0, UL_DGRAM_BROADCAST);
  ASSERT_GE(plain, 0);
  ASSERT_GE(bcast, 0);
  int on = 0;
  socklen_t olen = sizeof on;
  ASSERT_OK(getsockopt(bcast, SOL_SOCKET, SO_BROADCAST, &on, &olen));
  ASSERT_EQ(1, on);
  ASSERT_OK(getsockopt(plain, SOL_SOCKET, SO_BROADCAST, &on, &olen));
  ASSERT_EQ(0, on);
  ASSERT(fcntl(plain, F_GETFD) & FD_CLOEXEC);
  ASSERT(fcntl(plain, F_GETFL) & O_NONBLOCK);
  rec rp, rb;
  open_rec(loop, plain, &rp);
  open_rec(loop, bcast, &rb);
  struct sockaddr_in to = loopback4(9);
  to.sin_addr.s_addr = htonl(INADDR_BROADCAST);
  ASSERT_EQ(-EACCES, ul_dgram_sendto(rp.dgram, "b", 1, (struct sockaddr *)&to,
                                     sizeof to));
  int err = ul_dgram_sendto(rb.dgram, "b", 1, (struct sockaddr *)&to,
                            sizeof to);
  ASSERT(err == 0 || err == -ENETUNREACH);  /* no broadcast route here */
  /* Two sockets on one port. */
  int r1 = ul_dgram_socket(AF_INET, (struct sockaddr *)&any, sizeof any,
                           NULL, 0, UL_DGRAM_REUSEPORT);
  ASSERT_GE(r1, 0);
  struct sockaddr_in bound;
  socklen_t blen = sizeof bound;
  ASSERT_OK(getsockname(r1, (struct sockaddr *)&bound, &blen));
  int r2 = ul_dgram_socket(AF_INET, (struct sockaddr *)&bound, sizeof bound,
                           NULL, 0, UL_DGRAM_REUSEPORT);
  ASSERT_GE(r2, 0);
  test_close(r1);
  test_close(r2);
  ul_dgram_close(rp.dgram);
  ul_dgram_close(rb.dgram);
  run_until_lost(loop, &rp);
  run_until_lost(loop, &rb);
  CLOSE_LOOP(loop);
  return 0;
}

/* release_fd: the fd outlives the transport. */
TEST_IMPL(dgram_release_fd) {
  ul_loop *loop = test_loop_new();
  int sv[2];
  dgram_socketpair(sv);
  rec r;
  open_rec(loop, sv[0], &r);
  ASSERT_EQ(sv[0], ul_dgram_fileno(r.dgram));
  ASSERT_PTR_EQ(loop, ul_dgram_get_loop(r.dgram));
  ASSERT_PTR_EQ(&r, ul_dgram_get_context(r.dgram));
  ASSERT_EQ(sv[0], ul_dgram_release_fd(r.dgram));
  ul_dgram_close(r.dgram);
  run_until_lost(loop, &r);
  ASSERT(test_fd_is_open(sv[0]));
  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}
