/*
 * error.c -- names for the negative errno values the library returns.
 *
 * A fixed table rather than strerror(): ul_strerror() must return a static
 * string and be safe from any thread.
 */
#include <errno.h>

#include "unixloop.h"

#define UL_ERRNO_MAP(XX)                                          \
  XX(EPERM, "operation not permitted")                            \
  XX(ENOENT, "no such file or directory")                         \
  XX(ESRCH, "no such process")                                    \
  XX(EINTR, "interrupted system call")                            \
  XX(EIO, "i/o error")                                            \
  XX(E2BIG, "argument list too long")                             \
  XX(EBADF, "bad file descriptor")                                \
  XX(ECHILD, "no child processes")                                \
  XX(EAGAIN, "resource temporarily unavailable")                  \
  XX(ENOMEM, "not enough memory")                                 \
  XX(EACCES, "permission denied")                                 \
  XX(EFAULT, "bad address")                                       \
  XX(EBUSY, "resource busy or locked")                            \
  XX(EEXIST, "file already exists")                               \
  XX(ENOTDIR, "not a directory")                                  \
  XX(EISDIR, "is a directory")                                    \
  XX(EINVAL, "invalid argument")                                  \
  XX(ENFILE, "file table overflow")                               \
  XX(EMFILE, "too many open files")                               \
  XX(ENOSPC, "no space left on device")                           \
  XX(EPIPE, "broken pipe")                                        \
  XX(ERANGE, "result too large")                                  \
  XX(ENOSYS, "function not implemented")                          \
  XX(ENOTSOCK, "socket operation on non-socket")                  \
  XX(EADDRINUSE, "address already in use")                        \
  XX(EADDRNOTAVAIL, "address not available")                      \
  XX(ENETUNREACH, "network is unreachable")                       \
  XX(ECONNABORTED, "software caused connection abort")            \
  XX(ECONNRESET, "connection reset by peer")                      \
  XX(ENOTCONN, "socket is not connected")                         \
  XX(ESHUTDOWN, "cannot send after transport endpoint shutdown")  \
  XX(ETIMEDOUT, "connection timed out")                           \
  XX(ECONNREFUSED, "connection refused")                          \
  XX(EHOSTUNREACH, "host is unreachable")                         \
  XX(EALREADY, "connection already in progress")                  \
  XX(EINPROGRESS, "operation in progress")                        \
  XX(ECANCELED, "operation canceled")                             \
  XX(EMSGSIZE, "message too long")                                \
  XX(EDESTADDRREQ, "destination address required")                \
  XX(EISCONN, "socket is already connected")                      \
  XX(ENOBUFS, "no buffer space available")                        \
  XX(EAFNOSUPPORT, "address family not supported")

const char *ul_strerror(int err) {
  if (err == 0)
    return "success";
  switch (err) {
#define XX(code, text) \
  case -code:          \
    return text;
    UL_ERRNO_MAP(XX)
#undef XX
  default:
    return "unknown error";
  }
}

const char *ul_version(void) {
#define UL_STR2(x) #x
#define UL_STR(x) UL_STR2(x)
  return UL_STR(UL_VERSION_MAJOR) "." UL_STR(UL_VERSION_MINOR) "." UL_STR(
      UL_VERSION_PATCH);
}
