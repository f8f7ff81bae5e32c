/*
 * sendfile.c -- ul_stream_sendfile: a range of a file to a stream transport.
 *
 * The model is asyncio's loop.sendfile() on a socket transport:
 * _sendfile_native waits for the transport's write buffer to drain, then
 * unix_events._sock_sendfile_native_impl calls sendfile(2) each time the
 * socket is writable, and base_events._sendfile_fallback reads and writes
 * where sendfile(2) cannot serve.  Here both paths are one state machine
 * driven by the loop's watchers:
 *
 *   - sendfile(2) from a regular file, until EAGAIN (then wait for the
 *     socket to be writable) or a burst of BURST bytes (then let the other
 *     fds have their turn: the writer is level-triggered, so it fires again
 *     in the next iteration);
 *   - read (pread at the offset, or read() for a file that cannot seek) +
 *     write for the rest: a file that is not regular, or sendfile(2)
 *     failing with EINVAL / ENOSYS before the first byte.  A non-blocking
 *     file with nothing to read is waited for with a reader.
 *
 * stream.c knows of a running sendfile only through its `sendfile` field:
 * writes are refused, close and write_eof wait for it, and losing the
 * connection aborts it (ul__sendfile_abort).  The callback always runs from
 * the ready queue, queued before connection_lost when both are due.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define CHUNK (256 * 1024)          /* asyncio's fallback read size */
#define BURST (4 * 1024 * 1024)     /* bytes per wake-up */
#define MAX_SENDFILE 0x7ffff000     /* what Linux moves per call at most */

struct ul__sendfile {
  ul_stream *stream;
  ul_loop *loop;
  int sock;             /* the stream's fd */
  int file;
  off_t start;          /* the offset asked for */
  uint64_t count;       /* 0: up to the end of the file */
  uint64_t sent;
  ul_sendfile_cb cb;
  void *arg;
  int status;
  char *buf;            /* fallback: bytes read, buf[boff, blen) unsent */
  size_t boff;
  size_t blen;
  unsigned fallback : 1;   /* read + write instead of sendfile(2) */
  unsigned seekable : 1;   /* the file has positions (pread, lseek) */
  unsigned is_socket : 1;  /* write with send(MSG_NOSIGNAL) */
  unsigned writing : 1;    /* our writer on `sock` is registered */
  unsigned reading : 1;    /* our reader on `file` is registered */
  unsigned file_error : 1; /* the error is the file's, not the stream's */
};

typedef struct ul__sendfile sendfile_req;

static void sock_writable(ul_loop *loop, int fd, int events, void *arg);
static void file_readable(ul_loop *loop, int fd, int events, void *arg);

static void watchers_stop(sendfile_req *req) {
  if (req->writing) {
    ul_loop_remove_writer(req->loop, req->sock);
    req->writing = 0;
  }
  if (req->reading) {
    ul_loop_remove_reader(req->loop, req->file);
    req->reading = 0;
  }
}

static void req_free(sendfile_req *req) {
  free(req->buf);
  free(req);
}

static void done_cb(ul_loop *loop, void *arg, int status) {
  sendfile_req *req = arg;
  (void)loop;
  (void)status;  /* -ECANCELED at loop close: report what happened anyway */
  req->cb(req->stream, req->status, req->sent, req->arg);
  req_free(req);
}

/* Stops, puts the file position where asyncio leaves it, and queues the
 * callback (or, when the loop is closing, calls it now). */
static void report(sendfile_req *req, int status) {
  watchers_stop(req);
  if (req->sent > 0 && req->seekable)
    (void)lseek(req->file, req->start + (off_t)req->sent, SEEK_SET);
  req->status = status;
  if (ul_loop_call_soon(req->loop, done_cb, req) != 0)
    done_cb(req->loop, req, -ECANCELED);
}

/* The sendfile is over: report, then let the stream go on, or end it on
 * a connection error (a file error or a cancel leaves it open). */
static void finish(sendfile_req *req, int status) {
  ul_stream *s = req->stream;
  int conn_err = req->file_error || status == -ECANCELED ? 0 : status;
  report(req, status);
  ul__stream_sendfile_end(s, conn_err);
}

void ul__sendfile_abort(sendfile_req *req, int err) {
  report(req, err);
}

static int wait_writable(sendfile_req *req) {
  if (req->reading) {
    ul_loop_remove_reader(req->loop, req->file);
    req->reading = 0;
  }
  if (req->writing)
    return 0;
  int err = ul_loop_add_writer(req->loop, req->sock, sock_writable, req);
  if (err == 0)
    req->writing = 1;
  return err;
}

static int wait_readable(sendfile_req *req) {
  if (req->writing) {
    ul_loop_remove_writer(req->loop, req->sock);
    req->writing = 0;
  }
  if (req->reading)
    return 0;
  int err = ul_loop_add_reader(req->loop, req->file, file_readable, req);
  if (err == 0)
    req->reading = 1;
  return err;
}

static uint64_t remaining(const sendfile_req *req) {
  return req->count == 0 ? UINT64_MAX : req->count - req->sent;
}

/* One sendfile(2): bytes sent, 0 at the end of the file, or -errno. */
static ssize_t step_sendfile(sendfile_req *req) {
  uint64_t want = remaining(req);
  size_t n = want > MAX_SENDFILE ? MAX_SENDFILE : (size_t)want;
  off_t off = req->start + (off_t)req->sent;
  ssize_t r;
  do
    r = sendfile(req->sock, req->file, &off, n);
  while (r == -1 && errno == EINTR);
  return r == -1 ? -errno : r;
}

/* Read what the buffer lacks, then write: bytes written, 0 at the end of
 * the file, -EAGAIN with the reader needed (*need_read), or -errno. */
static ssize_t step_fallback(sendfile_req *req, int *need_read) {
  ssize_t r;
  *need_read = 0;
  if (req->boff == req->blen) {
    uint64_t want = remaining(req);
    size_t n = want > CHUNK ? CHUNK : (size_t)want;
    if (req->buf == NULL && (req->buf = ul__recv_area_alloc(CHUNK)) == NULL) {
      req->file_error = 1;
      return -ENOMEM;
    }
    do
      r = req->seekable
              ? pread(req->file, req->buf, n, req->start + (off_t)req->sent)
              : read(req->file, req->buf, n);
    while (r == -1 && errno == EINTR);
    if (r == -1) {
      *need_read = errno == EAGAIN || errno == EWOULDBLOCK;
      req->file_error = !*need_read;
      return -errno;
    }
    if (r == 0)
      return 0;
    req->boff = 0;
    req->blen = (size_t)r;
  }
  const char *p = req->buf + req->boff;
  size_t len = req->blen - req->boff;
  do
    r = req->is_socket ? send(req->sock, p, len, MSG_NOSIGNAL)
                       : write(req->sock, p, len);
  while (r == -1 && errno == EINTR);
  if (r == -1)
    return -errno;
  req->boff += (size_t)r;
  return r;
}

/* Sends until the socket is full, the range is sent, or a burst is done. */
void ul__sendfile_run(sendfile_req *req) {
  size_t burst = 0;
  int need_read = 0, err;
  for (;;) {
    if (remaining(req) == 0) {
      finish(req, 0);
      return;
    }
    ssize_t r = req->fallback ? step_fallback(req, &need_read)
                              : step_sendfile(req);
    if (r == 0) {  /* the end of the file */
      finish(req, 0);
      return;
    }
    if (r == -EAGAIN || r == -EWOULDBLOCK) {
      err = need_read ? wait_readable(req) : wait_writable(req);
      if (err) {
        req->file_error = need_read;
        finish(req, err);
      }
      return;
    }
    if (r < 0) {
      if (!req->fallback && req->sent == 0 && (r == -EINVAL || r == -ENOSYS)) {
        req->fallback = 1;  /* sendfile(2) cannot serve this pair */
        continue;
      }
      finish(req, (int)r);
      return;
    }
    req->sent += (uint64_t)r;
    burst += (size_t)r;
    if (burst >= BURST) {
      err = wait_writable(req);  /* the other fds' turn */
      if (err)
        finish(req, err);
      return;
    }
  }
}

static void sock_writable(ul_loop *loop, int fd, int events, void *arg) {
  (void)loop;
  (void)fd;
  (void)events;
  ul__sendfile_run(arg);
}

static void file_readable(ul_loop *loop, int fd, int events, void *arg) {
  (void)loop;
  (void)fd;
  (void)events;
  ul__sendfile_run(arg);
}

int ul_stream_sendfile(ul_stream *stream, int file_fd, off_t offset,
                       uint64_t count, ul_sendfile_cb cb, void *arg) {
  struct stat st;
  int flags, type, r;
  socklen_t tlen = sizeof type;

  if (stream == NULL || cb == NULL || file_fd < 0 || offset < 0)
    return -EINVAL;
  if (fstat(file_fd, &st) != 0 || (flags = fcntl(file_fd, F_GETFL)) == -1)
    return -EBADF;
  if ((flags & O_ACCMODE) == O_WRONLY)
    return -EBADF;
  sendfile_req *req = calloc(1, sizeof *req);
  if (req == NULL)
    return -ENOMEM;
  req->stream = stream;
  req->loop = ul_stream_get_loop(stream);
  req->sock = ul_stream_fileno(stream);
  req->file = file_fd;
  req->start = offset;
  req->count = count;
  req->cb = cb;
  req->arg = arg;
  req->is_socket =
      getsockopt(req->sock, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0;
  if (S_ISREG(st.st_mode)) {
    req->seekable = 1;
  } else {
    /* A pipe, a socket, a device: read + write, from the current position
     * when the file cannot seek. */
    req->fallback = 1;
    req->seekable = lseek(file_fd, offset, SEEK_SET) != (off_t)-1;
    if (!req->seekable && offset != 0) {
      req_free(req);
      return -ESPIPE;
    }
  }
  r = ul__stream_sendfile_begin(stream, req);
  if (r < 0) {
    req_free(req);
    return r;
  }
  if (r == 1)
    ul__sendfile_run(req);  /* else once the write buffer has drained */
  return 0;
}

int ul_stream_sendfile_cancel(ul_stream *stream) {
  if (stream == NULL)
    return -EINVAL;
  sendfile_req *req = ul__stream_sendfile_current(stream);
  if (req == NULL)
    return 0;
  finish(req, -ECANCELED);
  return 1;
}
