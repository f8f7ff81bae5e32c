/*
 * pipe.c -- read and write pipe transports: asyncio's
 * _UnixReadPipeTransport and _UnixWritePipeTransport.
 *
 * A pipe transport is a ul_stream of a pipe kind (stream.c does the
 * reading, the write queue, the water marks and closing); this file only
 * checks what the fd is and picks the kind:
 *
 *   - read pipe: never writes; EOF ends it (eof_received, then
 *     connection_lost(0)) whatever eof_received returns.
 *   - write pipe: never reads data; on a FIFO or a socket the fd is watched
 *     for readability, which on a write end means that the reader went away
 *     (epoll/poll report an error there).  A character device (a PTY) is not
 *     watched, as asyncio does not; its writes fail instead.
 */
#include <sys/stat.h>

#include "internal.h"

/* asyncio: "Pipe transport is for pipes/sockets only." -- and character
 * devices.  Stores the file type in *mode. */
static int pipe_check_fd(int fd, mode_t *mode) {
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0)
    return -EBADF;
  if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode))
    return -EINVAL;
  *mode = st.st_mode;
  return 0;
}

int ul_pipe_open_read(ul_loop *loop, int fd,
                      const ul_stream_protocol *protocol, void *ctx,
                      ul_stream **stream_out) {
  mode_t mode;
  if (loop == NULL || protocol == NULL || stream_out == NULL)
    return -EINVAL;
  int err = pipe_check_fd(fd, &mode);
  if (err)
    return err;
  return ul__stream_open(loop, fd, protocol, ctx, UL__STREAM_PIPE_READ,
                         stream_out);
}

int ul_pipe_open_write(ul_loop *loop, int fd,
                       const ul_stream_protocol *protocol, void *ctx,
                       ul_stream **stream_out) {
  mode_t mode;
  if (loop == NULL || protocol == NULL || stream_out == NULL)
    return -EINVAL;
  int err = pipe_check_fd(fd, &mode);
  if (err)
    return err;
  unsigned kind = UL__STREAM_PIPE_WRITE;
  if (S_ISCHR(mode))
    kind |= UL__STREAM_NO_HANGUP_WATCH;
  return ul__stream_open(loop, fd, protocol, ctx, kind, stream_out);
}
