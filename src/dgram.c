/*
 * dgram.c -- the datagram transport: asyncio's _SelectorDatagramTransport.
 *
 * Receiving: one recvmmsg() per readiness event takes every datagram the
 * kernel has queued (up to a batch) into the loop's shared receive area;
 * each is passed to datagram_received, valid only during the call.
 * Sending: ul_dgram_sendto() sends at once; only a datagram the kernel
 * refuses with EAGAIN is copied into the transport's queue, which is flushed
 * when the fd is writable.  pause_writing / resume_writing follow the water
 * marks on the bytes queued.
 *
 * Errors of receiving and of sending from the queue (an ICMP error reported
 * on a connected socket: ECONNREFUSED, ...) go to error_received and the
 * transport stays open, as in asyncio.  Closing is asynchronous, as for
 * streams: connection_lost runs from the loop, after connection_made, and
 * the transport is freed when it returns.
 */
#define _GNU_SOURCE   /* recvmmsg */
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

/* The loop's receive area: UDP datagrams fit 64 KiB (65,507 bytes of
 * payload at most); a UNIX-domain datagram may be as large as asyncio's
 * max_size (256 KiB), so fewer fit per batch. */
#define RECV_AREA_SIZE (1024 * 1024)
#define UDP_SLOT_SIZE (64 * 1024)
#define UNIX_SLOT_SIZE (256 * 1024)
#define MAX_BATCH (RECV_AREA_SIZE / UDP_SLOT_SIZE)

/* A datagram waiting for writability. */
typedef struct queued {
  struct queued *next;
  size_t len;
  socklen_t addrlen;          /* 0: send to the connected peer */
  struct sockaddr_storage addr;
  char data[];
} queued;

struct ul_dgram {
  ul_dgram *next;      /* the loop's list of open transports */
  ul_dgram *prev;
  ul_loop *loop;
  int fd;
  int family;
  const ul_dgram_protocol *proto;
  void *ctx;

  queued *qhead;       /* datagrams not yet sent, oldest first */
  queued *qtail;
  size_t qbytes;       /* their payload bytes (get_write_buffer_size) */
  size_t high;
  size_t low;

  struct sockaddr_storage peer;  /* the connected peer */
  socklen_t peerlen;             /* 0: not connected */

  unsigned made : 1;            /* connection_made has run */
  unsigned closing : 1;         /* close() or abort() */
  unsigned protocol_paused : 1; /* pause_writing() was called */
  unsigned lost_scheduled : 1;
  unsigned reader_on : 1;
  unsigned writer_on : 1;
  unsigned fd_released : 1;     /* ul_dgram_release_fd(): not ours to close */
  int lost_err;
};

/* ---- helpers ------------------------------------------------------------- */

static void queue_clear(ul_dgram *d) {
  while (d->qhead != NULL) {
    queued *q = d->qhead;
    d->qhead = q->next;
    free(q);
  }
  d->qtail = NULL;
  d->qbytes = 0;
}

static void dgram_free(ul_dgram *d) {
  if (d->prev != NULL)
    d->prev->next = d->next;
  else
    d->loop->dgrams = d->next;
  if (d->next != NULL)
    d->next->prev = d->prev;
  if (!d->fd_released)
    close(d->fd);
  queue_clear(d);
  free(d);
}

static void lost_cb(ul_loop *loop, void *arg, int status) {
  ul_dgram *d = arg;
  (void)loop;
  /* status -ECANCELED: the loop closed before it ran; report that */
  if (d->proto->connection_lost != NULL)
    d->proto->connection_lost(d, status < 0 ? status : d->lost_err, d->ctx);
  dgram_free(d);
}

/* ul_loop_close(): transports still open lose their connection with
 * -ECANCELED, so that nothing they own leaks (also those whose
 * connection_made had not run yet). */
void ul__dgrams_close_all(ul_loop *loop) {
  while (loop->dgrams != NULL) {
    ul_dgram *d = loop->dgrams;
    d->closing = 1;
    d->lost_scheduled = 1; /* nothing may schedule it again */
    if (d->proto->connection_lost != NULL)
      d->proto->connection_lost(d, -ECANCELED, d->ctx);
    dgram_free(d);
  }
  free(loop->dgram_buf);
  loop->dgram_buf = NULL;
}

static void watchers_stop(ul_dgram *d) {
  if (d->reader_on) {
    ul_loop_remove_reader(d->loop, d->fd);
    d->reader_on = 0;
  }
  if (d->writer_on) {
    ul_loop_remove_writer(d->loop, d->fd);
    d->writer_on = 0;
  }
}

/* Schedules connection_lost once; stops all I/O now. */
static void schedule_lost(ul_dgram *d, int err) {
  watchers_stop(d);
  d->closing = 1;
  if (d->lost_scheduled)
    return;
  d->lost_scheduled = 1;
  d->lost_err = err;
  if (ul_loop_call_soon(d->loop, lost_cb, d) != 0)
    lost_cb(d->loop, d, 0); /* out of memory: do not leak the fd */
}

/* An error that ends the transport (a watcher could not be added). */
static void fatal(ul_dgram *d, int err) {
  queue_clear(d);
  schedule_lost(d, err);
}

static void maybe_pause_protocol(ul_dgram *d) {
  if (d->qbytes <= d->high || d->protocol_paused)
    return;
  d->protocol_paused = 1;
  if (d->proto->pause_writing != NULL)
    d->proto->pause_writing(d, d->ctx);
}

static void maybe_resume_protocol(ul_dgram *d) {
  if (!d->protocol_paused || d->qbytes > d->low)
    return;
  d->protocol_paused = 0;
  if (d->proto->resume_writing != NULL)
    d->proto->resume_writing(d, d->ctx);
}

static void report_error(ul_dgram *d, int err) {
  if (d->proto->error_received != NULL)
    d->proto->error_received(d, err, d->ctx);
}

/* ---- receiving ------------------------------------------------------------ */

static char *loop_recv_area(ul_loop *loop) {
  if (loop->dgram_buf == NULL)
    loop->dgram_buf = ul__recv_area_alloc(RECV_AREA_SIZE);
  return loop->dgram_buf;
}

static void read_ready(ul_loop *loop, int fd, int events, void *arg) {
  ul_dgram *d = arg;
  (void)events;
  char *area = loop_recv_area(loop);
  if (area == NULL) {
    report_error(d, -ENOMEM);
    return;
  }
  size_t slot = d->family == AF_UNIX ? UNIX_SLOT_SIZE : UDP_SLOT_SIZE;
  unsigned batch = (unsigned)(RECV_AREA_SIZE / slot);
  struct mmsghdr msgs[MAX_BATCH];
  struct iovec iov[MAX_BATCH];
  struct sockaddr_storage addrs[MAX_BATCH];
  for (unsigned i = 0; i < batch; i++) {
    iov[i].iov_base = area + i * slot;
    iov[i].iov_len = slot;
    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
    msgs[i].msg_hdr.msg_name = &addrs[i];
    msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  int n;
  do
    n = recvmmsg(fd, msgs, batch, MSG_DONTWAIT, NULL);
  while (n == -1 && errno == EINTR);
  if (n == -1) {
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      report_error(d, -errno); /* ECONNREFUSED from an ICMP error, ... */
    return;
  }
  for (int i = 0; i < n && !d->closing; i++) {
    const struct msghdr *h = &msgs[i].msg_hdr;
    d->proto->datagram_received(d, iov[i].iov_base, msgs[i].msg_len,
                                (const struct sockaddr *)h->msg_name,
                                h->msg_namelen, d->ctx);
  }
}

static void reader_start(ul_dgram *d) {
  if (d->reader_on || d->closing || !d->made)
    return;
  int err = ul_loop_add_reader(d->loop, d->fd, read_ready, d);
  if (err)
    fatal(d, err);
  else
    d->reader_on = 1;
}

static void made_cb(ul_loop *loop, void *arg, int status) {
  ul_dgram *d = arg;
  (void)loop;
  if (status != 0)
    return; /* the loop is closing: ul__dgrams_close_all frees it */
  d->made = 1;
  if (d->proto->connection_made != NULL)
    d->proto->connection_made(d, d->ctx);
  reader_start(d);
}

/* ---- sending ---------------------------------------------------------------- */

/* One datagram: 0, or a negative errno (-EAGAIN when it would block). */
static int send_one(ul_dgram *d, const void *data, size_t len,
                    const struct sockaddr *addr, socklen_t addrlen) {
  ssize_t n;
  do
    n = addrlen ? sendto(d->fd, data, len, MSG_NOSIGNAL, addr, addrlen)
                : send(d->fd, data, len, MSG_NOSIGNAL);
  while (n == -1 && errno == EINTR);
  if (n == -1)
    return errno == EWOULDBLOCK || errno == ENOBUFS ? -EAGAIN : -errno;
  return 0;
}

static void write_ready(ul_loop *loop, int fd, int events, void *arg) {
  ul_dgram *d = arg;
  (void)loop;
  (void)fd;
  (void)events;
  while (d->qhead != NULL) {
    queued *q = d->qhead;
    int err = send_one(d, q->data, q->len, (struct sockaddr *)&q->addr,
                       q->addrlen);
    if (err == -EAGAIN)
      break;
    d->qhead = q->next;
    if (d->qhead == NULL)
      d->qtail = NULL;
    d->qbytes -= q->len;
    free(q);
    if (err) {
      report_error(d, err); /* the datagram is dropped, as in asyncio */
      if (d->lost_scheduled)
        return; /* error_received aborted the transport */
      break;
    }
  }
  maybe_resume_protocol(d);
  if (d->lost_scheduled || d->qhead != NULL)
    return; /* resume_writing may have aborted the transport */
  ul_loop_remove_writer(d->loop, d->fd);
  d->writer_on = 0;
  if (d->closing)
    schedule_lost(d, 0);
}

static int addr_equal(const struct sockaddr *a, socklen_t alen,
                      const struct sockaddr_storage *b, socklen_t blen) {
  return alen == blen && memcmp(a, b, alen) == 0;
}

int ul_dgram_sendto(ul_dgram *d, const void *data, size_t len,
                    const struct sockaddr *addr, socklen_t addrlen) {
  if (d == NULL || (data == NULL && len > 0) ||
      (addr == NULL) != (addrlen == 0) ||
      addrlen > sizeof(struct sockaddr_storage))
    return -EINVAL;
  if (d->closing)
    return -EPIPE;
  if (d->peerlen) {
    if (addr != NULL && !addr_equal(addr, addrlen, &d->peer, d->peerlen))
      return -EISCONN;
    addrlen = 0; /* send() to the peer */
  } else if (addr == NULL) {
    return -EDESTADDRREQ;
  }
  if (d->qhead == NULL) {
    int err = send_one(d, data, len, addr, addrlen);
    if (err != -EAGAIN)
      return err; /* sent, or an error the caller reports */
  }
  queued *q = malloc(sizeof *q + len);
  if (q == NULL)
    return -ENOMEM;
  q->next = NULL;
  q->len = len;
  q->addrlen = addrlen;
  if (addrlen)
    memcpy(&q->addr, addr, addrlen);
  if (len)
    memcpy(q->data, data, len);
  if (!d->writer_on) {
    int err = ul_loop_add_writer(d->loop, d->fd, write_ready, d);
    if (err) {
      free(q);
      return err;
    }
    d->writer_on = 1;
  }
  if (d->qtail != NULL)
    d->qtail->next = q;
  else
    d->qhead = q;
  d->qtail = q;
  d->qbytes += len;
  maybe_pause_protocol(d);
  return 0;
}

/* ---- life cycle ----------------------------------------------------------- */

int ul_dgram_open(ul_loop *loop, int fd, const ul_dgram_protocol *proto,
                  void *ctx, ul_dgram **dgram_out) {
  if (loop == NULL || proto == NULL || dgram_out == NULL ||
      proto->datagram_received == NULL) {
    if (fd >= 0)
      close(fd);
    return -EINVAL;
  }
  int flags = fcntl(fd, F_GETFL);
  if (fd < 0 || flags == -1)
    return -EBADF;
  int type;
  socklen_t tlen = sizeof type;
  struct sockaddr_storage local;
  socklen_t llen = sizeof local;
  int err = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == -1)
    err = errno == ENOTSOCK ? -ENOTSOCK : -errno;
  else if (type != SOCK_DGRAM)
    err = -EINVAL;
  else if (getsockname(fd, (struct sockaddr *)&local, &llen) == -1)
    err = -errno;
  else if (!(flags & O_NONBLOCK) &&
           fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1)
    err = -errno;
  ul_dgram *d = err ? NULL : calloc(1, sizeof *d);
  if (d == NULL) {
    close(fd);
    return err ? err : -ENOMEM;
  }
  d->loop = loop;
  d->fd = fd;
  d->family = local.ss_family;
  d->proto = proto;
  d->ctx = ctx;
  d->high = UL_DGRAM_HIGH_WATER;
  d->low = UL_DGRAM_HIGH_WATER / 4;
  d->peerlen = sizeof d->peer;
  if (getpeername(fd, (struct sockaddr *)&d->peer, &d->peerlen) == -1)
    d->peerlen = 0;
  err = ul_loop_call_soon(loop, made_cb, d);
  if (err) {
    close(fd);
    free(d);
    return err;
  }
  d->next = loop->dgrams;
  if (d->next != NULL)
    d->next->prev = d;
  loop->dgrams = d;
  *dgram_out = d;
  return 0;
}

int ul_dgram_close(ul_dgram *d) {
  if (d == NULL)
    return -EINVAL;
  if (d->closing)
    return 0;
  d->closing = 1;
  if (d->reader_on) {
    ul_loop_remove_reader(d->loop, d->fd);
    d->reader_on = 0;
  }
  if (d->qhead == NULL)
    schedule_lost(d, 0);
  /* else write_ready schedules it once the queue is flushed */
  return 0;
}

int ul_dgram_abort(ul_dgram *d) {
  if (d == NULL)
    return -EINVAL;
  if (d->lost_scheduled)
    return 0; /* connection_lost is coming (or running) already */
  fatal(d, 0);
  return 0;
}

int ul_dgram_is_closing(const ul_dgram *d) {
  return d != NULL && d->closing;
}

size_t ul_dgram_get_write_buffer_size(const ul_dgram *d) {
  return d ? d->qbytes : 0;
}

int ul_dgram_set_write_buffer_limits(ul_dgram *d, ssize_t high, ssize_t low) {
  if (d == NULL)
    return -EINVAL;
  int err = ul__water_marks(high, low, UL_DGRAM_HIGH_WATER, &d->high,
                            &d->low);
  if (err)
    return err;
  maybe_pause_protocol(d);
  return 0;
}

void ul_dgram_get_write_buffer_limits(const ul_dgram *d, size_t *low,
                                      size_t *high) {
  if (d == NULL)
    return;
  if (low != NULL)
    *low = d->low;
  if (high != NULL)
    *high = d->high;
}

int ul_dgram_get_peer(const ul_dgram *d, struct sockaddr_storage *addr,
                      socklen_t *addrlen) {
  if (d == NULL || addr == NULL || addrlen == NULL)
    return -EINVAL;
  if (d->peerlen == 0)
    return -ENOTCONN;
  memcpy(addr, &d->peer, d->peerlen);
  *addrlen = d->peerlen;
  return 0;
}

int ul_dgram_release_fd(ul_dgram *d) {
  if (d == NULL)
    return -EINVAL;
  d->fd_released = 1;
  return d->fd;
}

int ul_dgram_fileno(const ul_dgram *d) {
  return d ? d->fd : -1;
}

ul_loop *ul_dgram_get_loop(const ul_dgram *d) {
  return d ? d->loop : NULL;
}

void *ul_dgram_get_context(const ul_dgram *d) {
  return d ? d->ctx : NULL;
}

/* ---- creating the socket ---------------------------------------------------- */

static int addr_len_ok(const struct sockaddr *addr, socklen_t len) {
  if (addr == NULL)
    return len == 0;
  switch (addr->sa_family) {
  case AF_INET:
    return len >= sizeof(struct sockaddr_in);
  case AF_INET6:
    return len >= sizeof(struct sockaddr_in6);
  case AF_UNIX:
    return len > offsetof(struct sockaddr_un, sun_path) &&
           len <= sizeof(struct sockaddr_un);
  default:
    return 0;
  }
}

static int setopt_one(int fd, int level, int name) {
  int one = 1;
  return setsockopt(fd, level, name, &one, sizeof one) == -1 ? -errno : 0;
}

int ul_dgram_socket(int family, const struct sockaddr *local,
                    socklen_t local_len, const struct sockaddr *remote,
                    socklen_t remote_len, unsigned flags) {
  if (family == AF_UNSPEC)
    family = local ? local->sa_family : remote ? remote->sa_family : 0;
  if ((family != AF_INET && family != AF_INET6 && family != AF_UNIX) ||
      !addr_len_ok(local, local_len) || !addr_len_ok(remote, remote_len) ||
      (local && local->sa_family != family) ||
      (remote && remote->sa_family != family) ||
      (flags & ~(unsigned)(UL_DGRAM_REUSEPORT | UL_DGRAM_BROADCAST |
                           UL_DGRAM_IPV6ONLY)))
    return -EINVAL;
  if (family == AF_UNIX && (flags & UL_DGRAM_REUSEPORT))
    return -EINVAL; /* asyncio refuses it too */
  int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return -errno;
  int err = 0;
  if (flags & UL_DGRAM_REUSEPORT)
    err = setopt_one(fd, SOL_SOCKET, SO_REUSEPORT);
  if (!err && (flags & UL_DGRAM_BROADCAST))
    err = setopt_one(fd, SOL_SOCKET, SO_BROADCAST);
  if (!err && (flags & UL_DGRAM_IPV6ONLY) && family == AF_INET6)
    err = setopt_one(fd, IPPROTO_IPV6, IPV6_V6ONLY);
  if (!err && local != NULL && bind(fd, local, local_len) == -1)
    err = -errno;
  if (!err && remote != NULL) {
    int r;
    do
      r = connect(fd, remote, remote_len);
    while (r == -1 && errno == EINTR);
    if (r == -1)
      err = -errno;
  }
  if (err) {
    close(fd);
    return err;
  }
  return fd;
}
