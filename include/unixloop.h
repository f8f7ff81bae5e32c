/*
 * unixloop.h -- the public C API of libunixloop.
 *
 * libunixloop is asyncio's event loop model in C: callbacks scheduled on a
 * loop (call_soon), timers (call_later / call_at), fd readiness watchers
 * (add_reader / add_writer) and a thread-safe wake-up
 * (call_soon_threadsafe).  One iteration of the loop behaves like asyncio's
 * BaseEventLoop._run_once:
 *
 *   1. poll for I/O; the timeout is 0 when callbacks are ready or the loop is
 *      stopping, else the time until the earliest timer (at most one day),
 *      or forever when there is nothing to wait for;
 *   2. run the I/O callbacks of the fds that are ready;
 *   3. move every timer due before now + clock resolution to the ready queue;
 *   4. run the callbacks that were in the ready queue when step 4 began.
 *      Callbacks scheduled by those callbacks run in the next iteration.
 *
 * Conventions, valid for every function below:
 *   - Functions return 0 (or a non-negative value) on success and a negative
 *     errno on failure (-EINVAL, -EBADF, ...).  ul_strerror() names them.
 *     When a function that takes a callback fails, the callback will never
 *     be called.
 *   - A loop belongs to the thread that runs it.  Every function must be
 *     called from that thread (or, while the loop is not running, from any
 *     one thread at a time), except ul_loop_call_soon_threadsafe() and
 *     ul_loop_wakeup(), which may be called from any thread.
 *   - Every fd the library creates is O_CLOEXEC and non-blocking.
 */
#ifndef UNIXLOOP_H
#define UNIXLOOP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UL_EXTERN __attribute__((visibility("default")))
#else
#define UL_EXTERN
#endif

#define UL_VERSION_MAJOR 0
#define UL_VERSION_MINOR 1
#define UL_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

/* The loop.  Opaque: create it with ul_loop_new(), free it with
 * ul_loop_close(). */
typedef struct ul_loop ul_loop;

/* A timer scheduled by ul_loop_call_later() / ul_loop_call_at().  Opaque and
 * owned by the loop: the pointer is valid until its callback has returned,
 * or until ul_timer_cancel() has returned, whichever comes first. */
typedef struct ul_timer ul_timer;

/* I/O event bits passed to ul_io_cb. */
enum ul_io_events {
  UL_READABLE = 1,   /* the fd is readable, or at EOF */
  UL_WRITABLE = 2,   /* the fd is writable */
  UL_IO_ERROR = 4    /* the fd reported an error or hang-up (also sets the
                        bits of the directions being watched) */
};

/* Poll backends. */
typedef enum ul_backend {
  UL_BACKEND_DEFAULT = 0,  /* $UNIXLOOP_BACKEND if set ("epoll" or "poll"),
                              else epoll */
  UL_BACKEND_EPOLL = 1,    /* Linux epoll(7) */
  UL_BACKEND_POLL = 2      /* POSIX poll(2), portable */
} ul_backend;

/* Options for ul_loop_new().  Zero-initialise, then set what you need. */
typedef struct ul_loop_options {
  ul_backend backend;
} ul_loop_options;

/* ------------------------------------------------------------------------ */
/* Callbacks                                                                */
/* ------------------------------------------------------------------------ */

/* A scheduled callback (call_soon, call_later, call_at,
 * call_soon_threadsafe).  It is called exactly once, unless its timer is
 * cancelled: with status 0 when it runs, or with status -ECANCELED when the
 * loop is closed before it could run (so that `arg` can be released).  A
 * timer callback is never called after ul_timer_cancel() returned. */
typedef void (*ul_cb)(ul_loop *loop, void *arg, int status);

/* An fd watcher callback: `events` is a mask of ul_io_events.  It is called
 * during the I/O phase of an iteration, once per ready direction that has a
 * callback (the reader first).  It may add or remove any watcher, including
 * its own, and may close the fd after removing the watchers. */
typedef void (*ul_io_cb)(ul_loop *loop, int fd, int events, void *arg);

/* The loop's error handler (asyncio's call_exception_handler): receives the
 * errors the loop cannot return to a caller, and those reported by callbacks
 * through ul_loop_report_error().  `err` is a negative errno or 0; `message`
 * is valid only during the call.  The default handler prints to stderr. */
typedef void (*ul_error_cb)(ul_loop *loop, int err, const char *message,
                            void *arg);

/* A signal handler callback: runs on the loop, in the I/O phase of an
 * iteration, some time after `signum` was delivered.  Deliveries of the same
 * signal that arrive before it runs are coalesced into one call. */
typedef void (*ul_signal_cb)(ul_loop *loop, int signum, void *arg);

/* Visits one queued callback (see ul_loop_walk_pending).  A non-zero
 * return stops the walk. */
typedef int (*ul_walk_cb)(ul_cb cb, void *arg, void *ctx);

/* Poll hooks (see ul_loop_set_poll_hooks). */
typedef void (*ul_before_poll_cb)(ul_loop *loop, int timeout_ms, void *arg);
typedef int (*ul_after_poll_cb)(ul_loop *loop, int poll_err, void *arg);

/* ------------------------------------------------------------------------ */
/* Errors and version                                                       */
/* ------------------------------------------------------------------------ */

/* Returns a static, human-readable description of a negative errno (or 0). */
UL_EXTERN const char *ul_strerror(int err);

/* Returns "MAJOR.MINOR.PATCH". */
UL_EXTERN const char *ul_version(void);

/* ------------------------------------------------------------------------ */
/* The loop                                                                 */
/* ------------------------------------------------------------------------ */

/* Creates a loop.  `options` may be NULL.  On success stores the loop in
 * *loop_out and returns 0; the caller owns it and frees it with
 * ul_loop_close().
 * Errors: -EINVAL (NULL loop_out, unknown backend or bad $UNIXLOOP_BACKEND),
 * -ENOMEM, -EMFILE / -ENFILE (no fd for the backend or the wake-up eventfd).
 */
UL_EXTERN int ul_loop_new(ul_loop **loop_out, const ul_loop_options *options);

/* Closes the loop and frees it.  Callbacks still queued and timers still
 * pending are called with status -ECANCELED (in the order they would have
 * run), so they can release their argument; fd watchers are dropped without
 * a call (the fds are not closed: they belong to the caller).  Streams still
 * open lose their connection with -ECANCELED.  Servers still open are
 * closed; connects in progress get -ECANCELED: first each connect's
 * callback runs with fd = -ECANCELED (its socket closed) so that it can
 * release its arg, then each server still open is closed as by
 * ul_server_close() (listening fd closed, UNIX socket file removed) and
 * freed -- do not call ul_server_close() (or any ul_server_*) on it
 * afterwards.  Connects and servers started from those callbacks fail with
 * -ESHUTDOWN.
 * Errors: -EINVAL (NULL), -EBUSY (the loop is running; nothing is done). */
UL_EXTERN int ul_loop_close(ul_loop *loop);

/* Runs iterations until ul_loop_stop() is called, or until a poll hook or
 * ul_loop_break() interrupts it.  Returns 0 when stopped, or the error that
 * interrupted it.  A stop requested before the call makes it run exactly
 * one iteration, as asyncio's run_forever does.
 * Errors: -EINVAL (NULL), -EBUSY (already running), the value passed to
 * ul_loop_break(), or what an after-poll hook returned. */
UL_EXTERN int ul_loop_run(ul_loop *loop);

/* Runs one iteration (asyncio's _run_once).  `may_block` 0 polls with a
 * zero timeout.  Returns 0, or the error that interrupted the iteration (see
 * ul_loop_run).  Errors: -EINVAL, -EBUSY (called from inside a callback). */
UL_EXTERN int ul_loop_run_once(ul_loop *loop, int may_block);

/* Asks the loop to stop after the iteration in progress (or, when not
 * running, after the first iteration of the next ul_loop_run).
 * Errors: -EINVAL (NULL). */
UL_EXTERN int ul_loop_stop(ul_loop *loop);

/* Interrupts the iteration in progress right after the callback that calls
 * it: ul_loop_run / ul_loop_run_once return `err` (which must be negative).
 * Callbacks not yet run stay queued, in order, for the next run.  The
 * Python binding uses it to let KeyboardInterrupt escape run_forever.
 * Errors: -EINVAL (NULL loop, err >= 0, or the loop is not running). */
UL_EXTERN int ul_loop_break(ul_loop *loop, int err);

/* 1 if the loop is running (inside ul_loop_run / ul_loop_run_once). */
UL_EXTERN int ul_loop_is_running(const ul_loop *loop);

/* The monotonic clock, in seconds (CLOCK_MONOTONIC); the time base of
 * ul_loop_call_at().  Not cached: every call reads the clock. */
UL_EXTERN double ul_loop_time(const ul_loop *loop);

/* The resolution of ul_loop_time(), in seconds.  Timers due within it are
 * treated as due now. */
UL_EXTERN double ul_loop_clock_resolution(const ul_loop *loop);

/* The backend actually in use: "epoll" or "poll". */
UL_EXTERN const char *ul_loop_backend_name(const ul_loop *loop);

/* The number of callbacks in the ready queue (including ones scheduled
 * from other threads that have not been collected yet: 0 means none). */
UL_EXTERN size_t ul_loop_ready_count(const ul_loop *loop);

/* The number of pending (not yet due, not cancelled) timers. */
UL_EXTERN size_t ul_loop_timer_count(const ul_loop *loop);

/* The deadline of the earliest pending timer, or a negative value if none. */
UL_EXTERN double ul_loop_next_deadline(ul_loop *loop);

/* Calls `visit(cb, arg, ctx)` for every callback the loop will still call:
 * the ready queue, pending timers (not cancelled ones) and what other
 * threads queued.  For bindings whose garbage collector must see the
 * references the loop holds.  The visitor must not change the loop.
 * Returns 0, or the first non-zero value `visit` returned.
 * Errors: -EINVAL (NULL loop or visit). */
UL_EXTERN int ul_loop_walk_pending(ul_loop *loop, ul_walk_cb visit,
                                   void *ctx);

/* Sets the error handler; NULL restores the default (print to stderr).
 * Errors: -EINVAL (NULL loop). */
UL_EXTERN int ul_loop_set_error_handler(ul_loop *loop, ul_error_cb cb,
                                        void *arg);

/* Passes an error to the loop's error handler.  For callbacks, which cannot
 * return errors.  Errors: -EINVAL (NULL loop or message). */
UL_EXTERN int ul_loop_report_error(ul_loop *loop, int err,
                                   const char *message);

/* Sets hooks that run around the poll of each iteration: `before` with the
 * timeout about to be used (ms, -1 forever), `after` with the poll's result
 * (0 or a negative errno; -EINTR when a signal interrupted the wait).  If
 * `after` returns a negative value the iteration ends at once and
 * ul_loop_run / ul_loop_run_once return it; no callbacks run in that
 * iteration.  The Python binding releases the GIL in `before`, takes it back
 * and checks for Python signals in `after`.  Either may be NULL.
 * Errors: -EINVAL (NULL loop), -EBUSY (the loop is running). */
UL_EXTERN int ul_loop_set_poll_hooks(ul_loop *loop, ul_before_poll_cb before,
                                     ul_after_poll_cb after, void *arg);

/* Sets / returns an opaque pointer for the loop's user. */
UL_EXTERN void ul_loop_set_data(ul_loop *loop, void *data);
UL_EXTERN void *ul_loop_get_data(const ul_loop *loop);

/* ------------------------------------------------------------------------ */
/* Callbacks and timers                                                     */
/* ------------------------------------------------------------------------ */

/* Schedules `cb(loop, arg, 0)` to run in the ready queue (FIFO).  Called
 * from inside a callback, it runs in the next iteration.
 * Errors: -EINVAL (NULL loop or cb), -ENOMEM, -ESHUTDOWN (the loop is
 * being closed: called from a callback that ul_loop_close() cancels). */
UL_EXTERN int ul_loop_call_soon(ul_loop *loop, ul_cb cb, void *arg);

/* As ul_loop_call_soon(), but safe from any thread and from inside other
 * libraries' callbacks; wakes the loop if it is waiting in poll.  The call
 * runs in the loop's thread.
 * Errors: -EINVAL, -ENOMEM, -ESHUTDOWN (the loop is being closed). */
UL_EXTERN int ul_loop_call_soon_threadsafe(ul_loop *loop, ul_cb cb,
                                           void *arg);

/* Wakes the loop if it is waiting in poll; safe from any thread and from
 * async-signal handlers.  Errors: -EINVAL. */
UL_EXTERN int ul_loop_wakeup(ul_loop *loop);

/* Schedules `cb(loop, arg, 0)` to run `delay` seconds from now.  A negative
 * or zero delay means "in the next iteration that looks at the timers".
 * Timers with equal deadlines run in the order they were scheduled.  On
 * success stores the timer in *timer_out (may be NULL).
 * Errors: -EINVAL (NULL loop or cb, NaN delay), -ENOMEM, -ESHUTDOWN. */
UL_EXTERN int ul_loop_call_later(ul_loop *loop, double delay, ul_cb cb,
                                 void *arg, ul_timer **timer_out);

/* As ul_loop_call_later(), at an absolute ul_loop_time() deadline. */
UL_EXTERN int ul_loop_call_at(ul_loop *loop, double when, ul_cb cb, void *arg,
                              ul_timer **timer_out);

/* Cancels a timer: its callback will not be called, not even with
 * -ECANCELED.  Works whether the timer is still pending or already moved to
 * the ready queue of the iteration in progress.  The pointer is invalid
 * once this returns (the loop releases it lazily: a cancelled timer stays in
 * the heap until it reaches the top, and the heap is compacted when more
 * than half of it is cancelled, as asyncio does).
 * Errors: -EINVAL (NULL). */
UL_EXTERN int ul_timer_cancel(ul_timer *timer);

/* The deadline of a timer (ul_loop_time() base). */
UL_EXTERN double ul_timer_when(const ul_timer *timer);

/* ------------------------------------------------------------------------ */
/* Signals                                                                  */
/* ------------------------------------------------------------------------ */

/* How libunixloop shares the process's signal dispositions:
 *
 *   - The first loop that asks for a signal makes libunixloop its owner: it
 *     saves the current disposition (sigaction) and installs its own handler
 *     with SA_RESTART and every signal blocked while it runs.  The handler
 *     only records the signal in each interested loop (an atomic counter)
 *     and wakes that loop through its eventfd; it saves and restores errno.
 *   - Any number of loops, in any threads, may handle the same signal: every
 *     delivery reaches all of them.
 *   - When the last loop removes its handler for a signal (or closes), the
 *     saved disposition is put back: SIG_DFL for a process that had none,
 *     or whatever handler other code had installed before.
 *   - Code that changes a signal's disposition while libunixloop owns it
 *     takes it away from libunixloop; it is not restored later.
 *   - Python: the unixloop package does not use these functions.  CPython's
 *     signal module owns every disposition in a Python process (so that
 *     signal.getsignal() stays true); unixloop reads the signal numbers that
 *     signal.set_wakeup_fd() writes, as asyncio does.
 */

/* Makes `cb(loop, signum, arg)` run on the loop whenever `signum` is
 * delivered to the process.  Adding again for the same signal replaces the
 * callback and arg.  Nothing is installed when it fails.
 * Errors: -EINVAL (NULL loop or cb, signum outside 1..NSIG-1), -EPERM
 * (SIGKILL or SIGSTOP: they cannot be caught), -ESHUTDOWN (the loop is
 * being closed), or the error of sigaction(). */
UL_EXTERN int ul_loop_add_signal_handler(ul_loop *loop, int signum,
                                         ul_signal_cb cb, void *arg);

/* Removes the loop's handler for `signum`.  Returns 1 if there was one, 0 if
 * not; the callback is not called after this returns, even for a signal
 * already delivered.  ul_loop_close() removes every handler of the loop.
 * Errors: -EINVAL (NULL loop, signum out of range). */
UL_EXTERN int ul_loop_remove_signal_handler(ul_loop *loop, int signum);

/* ------------------------------------------------------------------------ */
/* fd watchers                                                              */
/* ------------------------------------------------------------------------ */

/* Calls `cb(loop, fd, UL_READABLE..., arg)` whenever `fd` is readable, until
 * removed.  One reader per fd: adding again replaces the callback and arg.
 * The fd stays owned by the caller; remove the watcher before closing it.
 * Errors: -EINVAL (NULL loop or cb), -EBADF (fd < 0 or not open),
 * -EPERM (epoll backend: a regular file or directory, which is always
 * ready), -ENOMEM. */
UL_EXTERN int ul_loop_add_reader(ul_loop *loop, int fd, ul_io_cb cb,
                                 void *arg);

/* As ul_loop_add_reader(), for writability. */
UL_EXTERN int ul_loop_add_writer(ul_loop *loop, int fd, ul_io_cb cb,
                                 void *arg);

/* Removes the reader (writer) of `fd`.  Returns 1 if there was one, 0 if
 * not.  Safe to call for an fd that was already closed.
 * Errors: -EINVAL (NULL loop). */
UL_EXTERN int ul_loop_remove_reader(ul_loop *loop, int fd);
UL_EXTERN int ul_loop_remove_writer(ul_loop *loop, int fd);

/* Returns the arg of the reader (writer) of `fd`, or NULL if none. */
UL_EXTERN void *ul_loop_get_reader(const ul_loop *loop, int fd);
UL_EXTERN void *ul_loop_get_writer(const ul_loop *loop, int fd);

/* ------------------------------------------------------------------------ */
/* Stream transports                                                        */
/* ------------------------------------------------------------------------ */

/* A stream transport: asyncio's socket transport for any connected stream
 * fd (TCP socket, UNIX socket, pipe end, PTY).  Opaque; owned by the loop
 * from ul_stream_open() until connection_lost has returned, when it is
 * freed: the pointer must not be used after that. */
typedef struct ul_stream ul_stream;

/* The protocol: asyncio's Protocol / BufferedProtocol as a table of
 * callbacks, all called on the loop, never from inside a ul_stream_* call
 * -- except pause_writing, which runs inside the ul_stream_write /
 * ul_stream_set_write_buffer_limits call that crosses the high-water mark,
 * as in asyncio.  `ctx` is the pointer given to ul_stream_open(). */
typedef struct ul_stream_protocol {
  /* First callback, in the iteration after ul_stream_open().  May be NULL. */
  void (*connection_made)(ul_stream *stream, void *ctx);
  /* Bytes received; `data` is valid only during the call.  Required unless
   * get_buffer and buffer_updated are set (they win when set). */
  void (*data_received)(ul_stream *stream, const char *data, size_t len,
                        void *ctx);
  /* BufferedProtocol: return where to read to (at least one byte), its size
   * in *len; then buffer_updated tells how much was read there. */
  char *(*get_buffer)(ul_stream *stream, size_t size_hint, size_t *len,
                      void *ctx);
  void (*buffer_updated)(ul_stream *stream, size_t nbytes, void *ctx);
  /* The peer closed its side.  Return non-zero to keep the transport open
   * (half-closed: writing still works); zero, or NULL, closes it. */
  int (*eof_received)(ul_stream *stream, void *ctx);
  /* Last callback: `err` is 0 after close / abort / EOF, or the error that
   * ended the connection (-ECONNRESET, -EPIPE, ...).  The fd is closed and
   * the stream freed when it returns. */
  void (*connection_lost)(ul_stream *stream, int err, void *ctx);
  /* Flow control: the write buffer rose above the high-water mark / fell to
   * the low-water mark.  May be NULL. */
  void (*pause_writing)(ul_stream *stream, void *ctx);
  void (*resume_writing)(ul_stream *stream, void *ctx);
  /* The write buffer has just been flushed to the kernel (it had bytes
   * queued).  May be NULL.  For code that must wait for an empty buffer,
   * such as asyncio's native sendfile. */
  void (*write_drained)(ul_stream *stream, void *ctx);
} ul_stream_protocol;

/* Default write buffer limits, as asyncio's. */
#define UL_STREAM_HIGH_WATER (64 * 1024)

/* Wraps a connected stream fd.  The stream takes the fd (sets it
 * non-blocking; closes it when the connection is lost, also on error
 * here).  connection_made runs in the next iteration, then reading starts
 * (a write-only fd, such as a pipe's write end, is watched only for the
 * peer going away; a read-only one refuses writes with -EPIPE).  Writes use
 * send(MSG_NOSIGNAL) on sockets, so a peer that went away is -EPIPE, not
 * SIGPIPE; for pipes, ignore SIGPIPE as asyncio (CPython) does.
 * `protocol` must stay valid until connection_lost has returned.
 * Errors: -EINVAL (NULL argument, no data callback), -EBADF, -ENOMEM. */
UL_EXTERN int ul_stream_open(ul_loop *loop, int fd,
                             const ul_stream_protocol *protocol, void *ctx,
                             ul_stream **stream_out);

/* Sends bytes: written at once as far as the kernel takes them, the rest
 * copied to the write buffer and sent when the fd is writable (writev).
 * Nothing written before close is lost.
 * Errors: -EINVAL, -EPIPE (after write_eof, or the stream is closing),
 * -ENOMEM.  A connection error is not returned: it ends the connection
 * through connection_lost. */
UL_EXTERN int ul_stream_write(ul_stream *stream, const void *data,
                              size_t len);
UL_EXTERN int ul_stream_writev(ul_stream *stream, const struct iovec *iov,
                               int iovcnt);

/* Closes the write side once the buffer is flushed (shutdown(SHUT_WR)).
 * Errors: -EINVAL, -ENOTSUP (the fd cannot half-close, e.g. a pipe). */
UL_EXTERN int ul_stream_write_eof(ul_stream *stream);
UL_EXTERN int ul_stream_can_write_eof(const ul_stream *stream);

/* Stops reading, flushes the write buffer, then closes: connection_lost(0)
 * runs after the last byte was sent (or at once, in the next iteration, if
 * the buffer is empty).  Calling it again does nothing.  Errors: -EINVAL. */
UL_EXTERN int ul_stream_close(ul_stream *stream);

/* Closes at once, dropping the write buffer; connection_lost(0) runs in the
 * next iteration.  Errors: -EINVAL. */
UL_EXTERN int ul_stream_abort(ul_stream *stream);

/* Pause / resume delivery of data (asyncio's pause_reading).  Pausing a
 * paused stream does nothing.  Errors: -EINVAL, -ESHUTDOWN (closing). */
UL_EXTERN int ul_stream_pause_reading(ul_stream *stream);
UL_EXTERN int ul_stream_resume_reading(ul_stream *stream);
UL_EXTERN int ul_stream_is_reading(const ul_stream *stream);
UL_EXTERN int ul_stream_is_closing(const ul_stream *stream);

/* Bytes waiting in the write buffer. */
UL_EXTERN size_t ul_stream_get_write_buffer_size(const ul_stream *stream);

/* Sets the water marks (asyncio's set_write_buffer_limits): -1 for high
 * means UL_STREAM_HIGH_WATER (or 4 x low when low is given), -1 for low
 * means high / 4.  Errors: -EINVAL (low > high). */
UL_EXTERN int ul_stream_set_write_buffer_limits(ul_stream *stream,
                                                ssize_t high, ssize_t low);
UL_EXTERN void ul_stream_get_write_buffer_limits(const ul_stream *stream,
                                                 size_t *low, size_t *high);

/* Switches the protocol table and ctx (asyncio's set_protocol), e.g. from
 * plain to buffered; the next callback goes to the new one.
 * Errors: -EINVAL (NULL, or no data callback). */
UL_EXTERN int ul_stream_set_protocol(ul_stream *stream,
                                     const ul_stream_protocol *protocol,
                                     void *ctx);

/* From now on the stream does not close its fd when the connection is lost:
 * the caller keeps owning it (a binding whose socket object closes the fd
 * itself).  Returns the fd.  Errors: -EINVAL. */
UL_EXTERN int ul_stream_release_fd(ul_stream *stream);

/* The fd, the loop and the protocol's ctx. */
UL_EXTERN int ul_stream_fileno(const ul_stream *stream);
UL_EXTERN ul_loop *ul_stream_get_loop(const ul_stream *stream);
UL_EXTERN void *ul_stream_get_context(const ul_stream *stream);

/* ---- sendfile ---------------------------------------------------------- */

/* The end of a ul_stream_sendfile(): `status` is 0 (done: the whole range,
 * or the file ended first) or a negative errno; `sent` is the number of
 * bytes sent, also on error.  Runs on the loop, never from inside a
 * ul_stream_* call, and before connection_lost when both are due. */
typedef void (*ul_sendfile_cb)(ul_stream *stream, int status, uint64_t sent,
                               void *arg);

/* Sends `count` bytes (0: up to the end of the file) of `file_fd` from
 * `offset` to the stream, as asyncio's loop.sendfile(): once the write
 * buffer has drained, with sendfile(2), falling back to read + write where
 * sendfile(2) cannot serve (it fails with EINVAL / ENOSYS before sending
 * anything, or `file_fd` is not a regular file: a pipe, a socket, a
 * character device; such a file is read from its current position, and
 * `offset` must then be 0 unless the file can seek).  A non-blocking
 * `file_fd` that has nothing to read is waited for on the loop.
 * When it ends, and bytes were sent, the file's position is set to
 * offset + sent, as asyncio does (a file that cannot seek keeps its own).
 * While it runs, ul_stream_write() and ul_stream_writev() fail with -EBUSY,
 * write_eof waits for its end, and ul_stream_close() lets it finish before
 * closing; ul_stream_abort() (or the loop closing) cancels it: the callback
 * then gets -ECANCELED.  A connection error (-EPIPE, -ECONNRESET) goes to
 * the callback, then ends the connection as a write error does (an error
 * reading the file only goes to the callback).  The
 * caller keeps owning `file_fd` and must keep it open until the callback.
 * Errors: -EINVAL (NULL stream or cb, negative fd or offset), -EBADF
 * (file_fd not open, or not open for reading), -ESPIPE (an offset in a
 * file that cannot seek), -EPIPE (the stream is closing, or write_eof was
 * called, or it is read-only), -EBUSY (a sendfile is already running),
 * -ENOMEM. */
UL_EXTERN int ul_stream_sendfile(ul_stream *stream, int file_fd, off_t offset,
                                 uint64_t count, ul_sendfile_cb cb, void *arg);

/* Stops the sendfile running on the stream (asyncio: the task awaiting
 * loop.sendfile() was cancelled): its callback gets -ECANCELED with the
 * bytes sent so far, the file position is set as at its end, and the
 * stream stays open -- writes work again at once.  Returns 1 if one was
 * running, 0 if not.  Errors: -EINVAL (NULL). */
UL_EXTERN int ul_stream_sendfile_cancel(ul_stream *stream);

/* ------------------------------------------------------------------------ */
/* Connecting and listening: TCP and UNIX-domain stream sockets            */
/* ------------------------------------------------------------------------ */

/* Result of a connect: `fd` is a connected, non-blocking, close-on-exec
 * socket (TCP_NODELAY set for TCP, as asyncio does) that the callback owns
 * (typically passing it to ul_stream_open), or a negative errno
 * (-ECONNREFUSED, -ENOENT for a missing UNIX path, -ETIMEDOUT, ...). */
typedef void (*ul_connect_cb)(ul_loop *loop, int fd, void *arg);

/* Connects to a TCP address (IPv4 or IPv6) without blocking; `cb` runs on
 * the loop when the connection is made or has failed (never from inside
 * this call), or with -ECANCELED from ul_loop_close() if the loop is closed
 * first.  Errors: -EINVAL (NULL, address family not AF_INET(6)),
 * -EMFILE / -ENFILE, -ENOMEM, -ESHUTDOWN (the loop is being closed). */
UL_EXTERN int ul_tcp_connect(ul_loop *loop, const struct sockaddr *addr,
                             socklen_t addrlen, ul_connect_cb cb, void *arg);

/* Connects to a UNIX-domain stream socket.  `path` holds `pathlen` bytes;
 * a name starting with a NUL byte is an abstract name (Linux).  As
 * ul_tcp_connect, `cb` gets -ECANCELED if the loop is closed first.
 * Errors: -EINVAL (NULL, empty or too long a path), -EMFILE, -ENOMEM,
 * -ESHUTDOWN. */
UL_EXTERN int ul_unix_connect(ul_loop *loop, const char *path,
                              size_t pathlen, ul_connect_cb cb, void *arg);

/* A listening socket that accepts connections on the loop. */
typedef struct ul_server ul_server;

/* A new connection: `fd` is accepted, non-blocking, close-on-exec (and
 * TCP_NODELAY for TCP); the callback owns it. */
typedef void (*ul_accept_cb)(ul_server *server, int fd, void *arg);

/* An error accepting (asyncio's "socket.accept() out of system resource"):
 * on -EMFILE / -ENFILE / -ENOBUFS / -ENOMEM the server stops accepting for
 * UL_SERVER_ACCEPT_RETRY_DELAY seconds, then resumes by itself. */
typedef void (*ul_server_error_cb)(ul_server *server, int err, void *arg);

#define UL_SERVER_ACCEPT_RETRY_DELAY 1.0

/* Listen flags. */
enum ul_listen_flags {
  UL_LISTEN_REUSEADDR = 1,  /* SO_REUSEADDR (asyncio's default on Unix) */
  UL_LISTEN_REUSEPORT = 2,  /* SO_REUSEPORT */
  UL_LISTEN_IPV6ONLY = 4    /* IPV6_V6ONLY on an AF_INET6 socket */
};

/* Binds, listens (backlog as asyncio's default: 100) and starts accepting:
 * up to `backlog` connections per wake-up, each given to `cb`.
 * `on_error` may be NULL (errors then go to the loop's error handler).
 * Close the server with ul_server_close(), or let ul_loop_close() close it.
 * Errors: -EINVAL, -EADDRINUSE, -EACCES, -EMFILE, -ENOMEM, -ESHUTDOWN. */
UL_EXTERN int ul_tcp_listen(ul_loop *loop, const struct sockaddr *addr,
                            socklen_t addrlen, int backlog, unsigned flags,
                            ul_accept_cb cb, ul_server_error_cb on_error,
                            void *arg, ul_server **server_out);

/* As ul_tcp_listen, on a UNIX-domain path (or an abstract name starting
 * with NUL).  A stale socket file left by a dead server is removed first, as
 * asyncio's create_unix_server does; a path in use by a live server gives
 * -EADDRINUSE, and a path that exists and is not a socket -EEXIST.  The
 * socket file is removed when the server is closed. */
UL_EXTERN int ul_unix_listen(ul_loop *loop, const char *path, size_t pathlen,
                             int backlog, ul_accept_cb cb,
                             ul_server_error_cb on_error, void *arg,
                             ul_server **server_out);

/* Accepts on a socket that is already bound and listening (taken over:
 * closed by ul_server_close).  Errors: -EINVAL, -EBADF, -ENOTSOCK,
 * -ESHUTDOWN. */
UL_EXTERN int ul_server_open(ul_loop *loop, int fd, int backlog,
                             ul_accept_cb cb, ul_server_error_cb on_error,
                             void *arg, ul_server **server_out);

/* Stop / start accepting (asyncio's start_serving / is_serving). */
UL_EXTERN int ul_server_stop(ul_server *server);
UL_EXTERN int ul_server_start(ul_server *server);
UL_EXTERN int ul_server_is_serving(const ul_server *server);

/* The listening fd (for getsockname). */
UL_EXTERN int ul_server_fileno(const ul_server *server);

/* From now on ul_server_close() (and ul_loop_close()) do not close the
 * listening fd: the caller keeps owning it (a binding whose socket object
 * closes the fd itself).  Returns the fd.  Errors: -EINVAL (NULL, closed). */
UL_EXTERN int ul_server_release_fd(ul_server *server);

/* Stops accepting, closes the socket (removing the UNIX socket file it
 * created) and frees the server; no callback runs after it returns.
 * ul_loop_close() closes and frees the servers still open: after it, the
 * server pointer is dangling -- do not call ul_server_close() on it.
 * Errors: -EINVAL. */
UL_EXTERN int ul_server_close(ul_server *server);

#ifdef __cplusplus
}
#endif

#endif /* UNIXLOOP_H */
