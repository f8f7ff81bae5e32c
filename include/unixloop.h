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
  /* Non-zero: never use io_uring(7).  By default small stream writes made
   * during an iteration are sent together at its end, with one system call
   * where the kernel offers io_uring (else one send each); also disabled by
   * the environment variable UNIXLOOP_IO_URING=0.  The results are the same
   * either way: this is for measuring and for sandboxes that log its use. */
  int no_io_uring;
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
 * a call (the fds are not closed: they belong to the caller).  Streams and
 * datagram transports still open lose their connection with -ECANCELED
 * (even those whose connection_made had not run yet: connection_lost is
 * then their only callback).  Servers still open are
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
 * and checks for Python signals in `after`.  Between the two the loop only
 * waits in the kernel and touches none of its own state, so a binding that
 * serializes every call with one lock released in `before` (the GIL) may
 * let another thread add or remove fd watchers meanwhile, as asyncio
 * programs expect; the new watcher counts from the next wait (wake the
 * loop with ul_loop_wakeup).  Either may be NULL.
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
   * get_buffer and buffer_updated are set. */
  void (*data_received)(ul_stream *stream, const char *data, size_t len,
                        void *ctx);
  /* BufferedProtocol: return where to read to (at least one byte), its size
   * in *len; then buffer_updated tells how much was read there.  Called
   * just before the read; a NULL return ends the stream with -ENOBUFS.
   * With data_received set as well, the two serve only reads expected to be
   * big (the stream's last read returned 16 KiB or more, or filled the
   * buffer get_buffer gave): the others are read into the loop's memory and
   * given to data_received.  For a binding that copies what it receives
   * (into a bytes object, say): big reads then go straight to their final
   * place.  Such a protocol also gets
   * buffer_updated(stream, 0, ctx) when a read into its buffer brought no
   * bytes (none had come yet, EOF, an error): it may release the buffer
   * rather than hold it while the connection idles. */
  char *(*get_buffer)(ul_stream *stream, size_t size_hint, size_t *len,
                      void *ctx);
  void (*buffer_updated)(ul_stream *stream, size_t nbytes, void *ctx);
  /* The peer closed its side.  Return non-zero to keep the transport open
   * (half-closed: writing still works); zero, or NULL, closes it. */
  int (*eof_received)(ul_stream *stream, void *ctx);
  /* Last callback: `err` is 0 after close / abort / EOF, or the error that
   * ended the connection (-ECONNRESET, -EPIPE, ...), or -ECANCELED when
   * ul_loop_close() ended it (then possibly without connection_made).  The
   * fd is closed and the stream freed when it returns. */
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
 * Nothing written before close is lost.  A socket that ul_stream_close()
 * is still flushing takes more bytes (as asyncio's socket transport does:
 * a TLS layer writes its close_notify from resume_writing, called as the
 * buffer drains); they are sent before the close.
 * Errors: -EINVAL, -EPIPE (after write_eof; once connection_lost is due:
 * closed with an empty buffer, aborted, a connection error; a pipe that
 * is closing), -ENOMEM.  A connection error is not returned: it ends the connection
 * through connection_lost. */
UL_EXTERN int ul_stream_write(ul_stream *stream, const void *data,
                              size_t len);
UL_EXTERN int ul_stream_writev(ul_stream *stream, const struct iovec *iov,
                               int iovcnt);

/* Gives back a buffer queued by ul_stream_write_ref(). */
typedef void (*ul_release_cb)(void *arg);

/* As ul_stream_write(), but what the kernel does not take at once is
 * queued by reference, not copied: `data` must stay valid and unchanged
 * until `release(arg)` is called.  For large immutable buffers (the Python
 * binding passes bytes objects).  When bytes queued by ul_stream_write()
 * are still waiting, the rest is copied instead (so that nothing overtakes
 * them).
 * Returns 1 when the stream kept the reference: release(arg) is then called
 * exactly once, on the loop's thread, when the stream is done with the
 * bytes (sent, dropped by abort or an error, or the loop closed) -- which
 * may be before this returns.  Returns 0 when it did not (all written, or
 * copied): release is never called.
 * Errors: as ul_stream_write(), and -EINVAL for a NULL release. */
UL_EXTERN int ul_stream_write_ref(ul_stream *stream, const void *data,
                                  size_t len, ul_release_cb release,
                                  void *arg);

/* Closes the write side once the buffer is flushed (shutdown(SHUT_WR)).
 * Errors: -EINVAL, -ENOTSUP (the fd cannot half-close, e.g. a pipe). */
UL_EXTERN int ul_stream_write_eof(ul_stream *stream);
UL_EXTERN int ul_stream_can_write_eof(const ul_stream *stream);

/* Stops reading, flushes the write buffer, then closes: connection_lost(0)
 * runs after the last byte was sent (or at once, in the next iteration, if
 * the buffer is empty); bytes written to a socket while it flushes are
 * sent too.
 * Calling it again does nothing.  Errors: -EINVAL. */
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
/* Pipe transports                                                          */
/* ------------------------------------------------------------------------ */

/* asyncio's read and write pipe transports (connect_read_pipe,
 * connect_write_pipe, a subprocess's stdin / stdout / stderr) over a pipe
 * end, a socket or a character device such as a PTY.  A pipe transport is
 * a ul_stream of a pipe kind: the ul_stream_* functions work on it, with
 * the differences written here, and the rules of ul_stream_open (ownership,
 * when callbacks run, freeing after connection_lost) hold.
 *
 * On success the transport takes the fd (sets it non-blocking, closes it
 * when the connection is lost unless ul_stream_release_fd() was called).
 * On error the fd is left open and stays the caller's (asyncio raises and
 * leaves the pipe to its owner).  Writing to a pipe whose reader went away
 * raises SIGPIPE unless it is ignored (CPython ignores it); sockets use
 * MSG_NOSIGNAL. */

/* A read pipe: reads as a stream does (data_received or a buffered
 * protocol, pause / resume reading).  At EOF eof_received runs (its return
 * value is ignored) and then connection_lost(0): a read pipe never stays
 * half-open.  A read error ends it with connection_lost(-errno), e.g. -EIO
 * from a PTY whose other side was closed.  Writes return -EPIPE,
 * ul_stream_write_eof() -ENOTSUP.
 * Errors: -EINVAL (NULL argument, no data callback, or an fd that is not a
 * FIFO, socket or character device: a regular file, a directory...),
 * -EBADF (fd not open), -ENOMEM, -ESHUTDOWN (the loop is being closed). */
UL_EXTERN int ul_pipe_open_read(ul_loop *loop, int fd,
                                const ul_stream_protocol *protocol, void *ctx,
                                ul_stream **stream_out);

/* A write pipe: writes, the write buffer and its water marks
 * (pause_writing / resume_writing) as a stream's; data_received and
 * get_buffer are not needed.  On a FIFO or a socket the fd is watched for
 * the reader going away: connection_lost(-EPIPE) if bytes were still
 * queued (they are dropped), connection_lost(0) if none were, as asyncio.
 * A write that fails ends it with connection_lost(-errno) (-EPIPE when the
 * reader went away, -EIO for a PTY whose other side closed...).
 * ul_stream_write_eof() is ul_stream_close(): flush, then close the fd,
 * which is the reader's EOF (ul_stream_can_write_eof() is 1).
 * ul_stream_pause_reading() / resume_reading() return -ENOTSUP and
 * ul_stream_is_reading() is 0.
 * Errors: as ul_pipe_open_read(), except that no data callback is needed. */
UL_EXTERN int ul_pipe_open_write(ul_loop *loop, int fd,
                                 const ul_stream_protocol *protocol,
                                 void *ctx, ul_stream **stream_out);

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

/* ------------------------------------------------------------------------ */
/* Datagram transports: UDP (IPv4, IPv6) and UNIX-domain datagram sockets  */
/* ------------------------------------------------------------------------ */

/* A datagram transport: asyncio's datagram transport for a SOCK_DGRAM
 * socket, connected (it has a peer: datagrams go to it, and only its
 * datagrams are received) or not (each send names its destination).
 * Opaque; owned by the loop from ul_dgram_open() until connection_lost has
 * returned, when it is freed: the pointer must not be used after that. */
typedef struct ul_dgram ul_dgram;

/* The protocol: asyncio's DatagramProtocol as a table of callbacks, all
 * called on the loop, never from inside a ul_dgram_* call -- except
 * pause_writing, which runs inside the ul_dgram_sendto /
 * ul_dgram_set_write_buffer_limits call that crosses the high-water mark,
 * as in asyncio.  `ctx` is the pointer given to ul_dgram_open().  Any
 * callback may close or abort the transport. */
typedef struct ul_dgram_protocol {
  /* First callback, in the iteration after ul_dgram_open().  May be NULL. */
  void (*connection_made)(ul_dgram *dgram, void *ctx);
  /* One datagram (possibly empty): `data` and `addr` (the sender, `addrlen`
   * bytes; 0 for an unnamed UNIX-domain sender on some systems) are valid
   * only during the call.  Required.  Datagrams arrive in batches (one
   * recvmmsg per wake-up); closing the transport here drops the rest of the
   * batch. */
  void (*datagram_received)(ul_dgram *dgram, const char *data, size_t len,
                            const struct sockaddr *addr, socklen_t addrlen,
                            void *ctx);
  /* A receive or send error that does not end the transport: on a connected
   * socket, an ICMP error from an earlier datagram (-ECONNREFUSED when
   * nothing listens at the peer), or a queued datagram the kernel refused
   * (-EMSGSIZE, ...; that datagram is dropped).  May be NULL. */
  void (*error_received)(ul_dgram *dgram, int err, void *ctx);
  /* Last callback: `err` is 0 after close / abort, -ECANCELED when the
   * loop was closed first (then possibly without connection_made), or the
   * error that ended the transport.  The fd is closed and the transport
   * freed when it returns. */
  void (*connection_lost)(ul_dgram *dgram, int err, void *ctx);
  /* Flow control: the bytes queued rose above the high-water mark / fell
   * to the low-water mark.  May be NULL. */
  void (*pause_writing)(ul_dgram *dgram, void *ctx);
  void (*resume_writing)(ul_dgram *dgram, void *ctx);
} ul_dgram_protocol;

/* Default write buffer limits, as asyncio's: high 64 KiB, low high / 4. */
#define UL_DGRAM_HIGH_WATER (64 * 1024)

/* Wraps a SOCK_DGRAM socket (bound, connected, or neither).  The transport
 * takes the fd (sets it non-blocking; closes it when the connection is
 * lost, also on error here).  A socket connected at this call is used as
 * connected: sends go to its peer.  connection_made runs in the next
 * iteration, then receiving starts.  `protocol` must stay valid until
 * connection_lost has returned.
 * Errors: -EINVAL (NULL argument, no datagram_received, not a SOCK_DGRAM
 * socket), -EBADF, -ENOTSOCK, -ENOMEM. */
UL_EXTERN int ul_dgram_open(ul_loop *loop, int fd,
                            const ul_dgram_protocol *protocol, void *ctx,
                            ul_dgram **dgram_out);

/* Sends one datagram of `len` bytes (0 is a valid, empty datagram) at
 * once; only when the kernel would block (EAGAIN, ENOBUFS) is it copied to
 * the transport's queue and sent when the fd is writable, in order.
 * `addr` is the destination: required when not connected; when connected
 * it must be NULL or the peer's address.  The caller keeps `data` and
 * `addr`.
 * Errors: -EINVAL (NULL with a length, addr and addrlen disagree),
 * -EPIPE (closing), -EDESTADDRREQ (not connected and no addr), -EISCONN
 * (connected and addr is another address), -ENOMEM; and the send's own
 * error, the datagram then dropped and the transport still open (asyncio
 * passes these to error_received): -ECONNREFUSED (an earlier ICMP error on
 * a connected socket), -EMSGSIZE, -ENETUNREACH, -EACCES (broadcast without
 * UL_DGRAM_BROADCAST), ... */
UL_EXTERN int ul_dgram_sendto(ul_dgram *dgram, const void *data, size_t len,
                              const struct sockaddr *addr, socklen_t addrlen);

/* Stops receiving, sends what is queued, then closes: connection_lost(0)
 * runs once the queue is empty (in the next iteration if it is already).
 * Calling it again does nothing.  Errors: -EINVAL. */
UL_EXTERN int ul_dgram_close(ul_dgram *dgram);

/* Closes at once, dropping the queue; connection_lost(0) runs in the next
 * iteration.  Errors: -EINVAL. */
UL_EXTERN int ul_dgram_abort(ul_dgram *dgram);

UL_EXTERN int ul_dgram_is_closing(const ul_dgram *dgram);

/* Payload bytes waiting in the queue. */
UL_EXTERN size_t ul_dgram_get_write_buffer_size(const ul_dgram *dgram);

/* Sets the water marks (asyncio's set_write_buffer_limits): -1 for high
 * means UL_DGRAM_HIGH_WATER (or 4 x low when low is given), -1 for low
 * means high / 4.  May call pause_writing at once.
 * Errors: -EINVAL (low > high). */
UL_EXTERN int ul_dgram_set_write_buffer_limits(ul_dgram *dgram, ssize_t high,
                                               ssize_t low);
UL_EXTERN void ul_dgram_get_write_buffer_limits(const ul_dgram *dgram,
                                                size_t *low, size_t *high);

/* Copies the connected peer's address.  Errors: -EINVAL, -ENOTCONN. */
UL_EXTERN int ul_dgram_get_peer(const ul_dgram *dgram,
                                struct sockaddr_storage *addr,
                                socklen_t *addrlen);

/* From now on the transport does not close its fd when the connection is
 * lost: the caller keeps owning it.  Returns the fd.  Errors: -EINVAL. */
UL_EXTERN int ul_dgram_release_fd(ul_dgram *dgram);

/* The fd, the loop and the protocol's ctx. */
UL_EXTERN int ul_dgram_fileno(const ul_dgram *dgram);
UL_EXTERN ul_loop *ul_dgram_get_loop(const ul_dgram *dgram);
UL_EXTERN void *ul_dgram_get_context(const ul_dgram *dgram);

/* Flags of ul_dgram_socket(). */
enum ul_dgram_flags {
  UL_DGRAM_REUSEPORT = 1,  /* SO_REUSEPORT (not for AF_UNIX) */
  UL_DGRAM_BROADCAST = 2,  /* SO_BROADCAST: may send to broadcast addresses */
  UL_DGRAM_IPV6ONLY = 4    /* IPV6_V6ONLY on an AF_INET6 socket */
};

/* Creates a non-blocking, close-on-exec SOCK_DGRAM socket of `family`
 * (AF_INET, AF_INET6, AF_UNIX; AF_UNSPEC takes the family of the
 * addresses), sets `flags`, binds it to `local` and connects it to
 * `remote` when they are not NULL (a UNIX-domain `local` path must not
 * exist yet; it is not removed later).  Returns the fd, which the caller
 * owns (typically passing it to ul_dgram_open), or a negative errno.
 * Errors: -EINVAL (unknown family or flag, an address of another family
 * or of a bad length, REUSEPORT on AF_UNIX), -EADDRINUSE, -EACCES,
 * -EADDRNOTAVAIL, -ENOENT (no UNIX-domain socket at `remote`),
 * -ECONNREFUSED, -EMFILE, ... */
UL_EXTERN int ul_dgram_socket(int family, const struct sockaddr *local,
                              socklen_t local_len,
                              const struct sockaddr *remote,
                              socklen_t remote_len, unsigned flags);

/* ------------------------------------------------------------------------ */
/* Spawning processes                                                       */
/* ------------------------------------------------------------------------ */

/* What a child's stdin / stdout / stderr is. */
typedef enum ul_stdio_mode {
  UL_STDIO_INHERIT = 0,  /* the parent's own fd 0 / 1 / 2 */
  UL_STDIO_PIPE = 1,     /* a new pipe; the parent's end (non-blocking,
                            close-on-exec) is returned by ul_spawn */
  UL_STDIO_DEVNULL = 2,  /* /dev/null */
  UL_STDIO_FD = 3,       /* the fd in ul_stdio.fd (the caller keeps it) */
  UL_STDIO_STDOUT = 4    /* stderr only: the same as the child's stdout */
} ul_stdio_mode;

typedef struct ul_stdio {
  ul_stdio_mode mode;
  int fd;                /* UL_STDIO_FD only */
} ul_stdio;

/* ul_spawn_options.flags: each flag turns on one option. */
enum ul_spawn_flags {
  UL_SPAWN_CLOSE_FDS = 1,         /* close every fd >= 3 but pass_fds */
  UL_SPAWN_NEW_SESSION = 2,       /* setsid() */
  UL_SPAWN_PROCESS_GROUP = 4,     /* setpgid(0, process_group) */
  UL_SPAWN_UMASK = 8,             /* umask(umask) */
  UL_SPAWN_SETUID = 16,           /* setresuid(uid, uid, uid) */
  UL_SPAWN_SETGID = 32,           /* setresgid(gid, gid, gid) */
  UL_SPAWN_SETGROUPS = 64,        /* setgroups(ngroups, groups) */
  UL_SPAWN_RESTORE_SIGNALS = 128  /* SIGPIPE and SIGXFSZ back to SIG_DFL
                                     (Python's restore_signals) */
};

/* How to start a child.  Zero-initialise, then set what you need. */
typedef struct ul_spawn_options {
  /* The program: a path, or a name looked up in $PATH (the PATH of `envp`
   * when it has one, else the parent's) when it has no '/'.  NULL means
   * argv[0]. */
  const char *file;
  char *const *argv;        /* NULL-terminated, at least argv[0] */
  char *const *envp;        /* NULL-terminated; NULL: the parent's environ */
  const char *cwd;          /* NULL: the parent's */
  ul_stdio stdio[3];
  unsigned flags;           /* ul_spawn_flags */
  const int *pass_fds;      /* fds the child keeps (made inheritable) */
  size_t npass_fds;
  pid_t process_group;      /* UL_SPAWN_PROCESS_GROUP */
  mode_t umask;             /* UL_SPAWN_UMASK */
  uid_t uid;                /* UL_SPAWN_SETUID */
  gid_t gid;                /* UL_SPAWN_SETGID */
  const gid_t *groups;      /* UL_SPAWN_SETGROUPS */
  size_t ngroups;
} ul_spawn_options;

/* Where a failed ul_spawn failed (ul_spawn_result.failed_step). */
enum ul_spawn_step {
  UL_SPAWN_STEP_PARENT = 0,  /* in the parent: bad options, no fds, ... */
  UL_SPAWN_STEP_SETUP = 1,   /* in the child, before exec (cwd, setuid,
                                dup2, ...) */
  UL_SPAWN_STEP_EXEC = 2     /* exec itself (ENOENT, EACCES, ENOEXEC, ...) */
};

typedef struct ul_spawn_result {
  pid_t pid;
  int stdio_fds[3];   /* the parent's end of each UL_STDIO_PIPE, else -1:
                         stdin's is the write end, the others the read end.
                         The caller owns them. */
  int pidfd;          /* a pidfd of the child (close-on-exec) when asked for
                         with ul_spawn_pidfd(), else -1; the caller owns it */
  int failed_step;    /* on error: an ul_spawn_step */
} ul_spawn_result;

/* Starts a child without copying the parent's memory
 * (clone(CLONE_VM | CLONE_VFORK) with a small stack of its own), so the
 * cost does not grow with the parent's heap.  In the child: every signal
 * handler the parent installed is reset to SIG_DFL (ignored signals stay
 * ignored unless UL_SPAWN_RESTORE_SIGNALS), the parent's signal mask is
 * kept, then in this order: setsid / setpgid, stdio, cwd, umask, groups,
 * gid, uid, close_fds / pass_fds, exec.  Returns once the child has called
 * exec (or failed).  The child is the caller's to reap.
 * Errors: -EINVAL (NULL options or result, no argv[0], bad stdio), the
 * parent's errors (-EMFILE, -ENOMEM, -EAGAIN), and the child's: exec's
 * (-ENOENT, -EACCES, -ENOEXEC, ...) with failed_step UL_SPAWN_STEP_EXEC, or
 * a setup step's (-ENOENT for a missing cwd, -EPERM for setuid, ...) with
 * UL_SPAWN_STEP_SETUP.  A child that failed is reaped before this returns,
 * and nothing is left open. */
UL_EXTERN int ul_spawn(const ul_spawn_options *options,
                       ul_spawn_result *result);

/* As ul_spawn(), also returning a pidfd for the child in result->pidfd
 * (CLONE_PIDFD, or pidfd_open() on kernels without it; -1 where neither
 * works). */
UL_EXTERN int ul_spawn_pidfd(const ul_spawn_options *options,
                             ul_spawn_result *result);

/* ------------------------------------------------------------------------ */
/* Processes and child watchers                                             */
/* ------------------------------------------------------------------------ */

/* A child process watched by a loop.  Opaque; see ul_process_close() for
 * when it is freed. */
typedef struct ul_process ul_process;

/* The child exited: `returncode` is its exit status (0..255), or minus the
 * number of the signal that killed it (-9 for SIGKILL), or 255 when it was
 * reaped by other code (the loop's error handler is told), or -ECANCELED
 * (-125) when the loop was closed first.  Called once, on the loop; the
 * process stays valid until ul_process_close(). */
typedef void (*ul_exit_cb)(ul_process *process, int returncode, void *arg);

/* How a loop learns that its children exited (ul_loop_set_child_watcher).
 * The watchers of the seed (asyncio's unix_events.py): */
typedef enum ul_child_watcher {
  UL_WATCHER_DEFAULT = 0,  /* pidfd where the kernel has it, else thread */
  UL_WATCHER_PIDFD = 1,    /* a pidfd per child on the loop's poller: O(1)
                              per exit, no signal handler, no thread */
  UL_WATCHER_SAFE = 2,     /* SIGCHLD, then waitpid(pid) for each child of
                              the loop: O(n) per SIGCHLD */
  UL_WATCHER_FAST = 3,     /* SIGCHLD, then waitpid(-1): O(1) per exit, but
                              it reaps every child of the process, also the
                              ones other code started (they are reported as
                              "unknown"); a child that exits before it is
                              registered is kept and reported when it is */
  UL_WATCHER_THREAD = 4,   /* a thread per child blocked in waitpid(pid) */
  UL_WATCHER_MULTI = 5     /* SIGCHLD on any loop that has children reaps
                              (waitpid(pid)) the children of every loop
                              watched this way, in any thread, and passes
                              each exit to its own loop: children of loops
                              that are not running are reaped anyway */
} ul_child_watcher;

/* Selects how the loop watches the children it starts from now on.
 * SAFE, FAST and MULTI add a SIGCHLD handler to the loop (see Signals).
 * Errors: -EINVAL (NULL loop, unknown watcher), -ENOSYS (PIDFD on a kernel
 * without pidfd_open), -EBUSY (the loop watches children). */
UL_EXTERN int ul_loop_set_child_watcher(ul_loop *loop,
                                        ul_child_watcher watcher);

/* The watcher in use (never UL_WATCHER_DEFAULT). */
UL_EXTERN ul_child_watcher ul_loop_get_child_watcher(const ul_loop *loop);

/* Spawns a child (ul_spawn) and watches it: `cb` runs once on the loop when
 * it has exited (its status reaped).  On success stores the process in
 * *process_out and the parent's pipe ends in stdio_fds (may be NULL when no
 * stdio is UL_STDIO_PIPE; the caller owns them).  When it fails nothing is
 * started and `cb` is never called; *failed_step (may be NULL) tells where.
 * Errors: those of ul_spawn, -EINVAL (NULL loop, cb or process_out),
 * -ESHUTDOWN (the loop is being closed), -ENOMEM. */
UL_EXTERN int ul_process_spawn(ul_loop *loop, const ul_spawn_options *options,
                               ul_exit_cb cb, void *arg,
                               ul_process **process_out, int stdio_fds[3],
                               int *failed_step);

/* Watches a child started by other code (it must be a child of this
 * process, not yet reaped).  Errors: -EINVAL, -ESHUTDOWN, -ENOMEM, -ESRCH
 * (pidfd watcher: no such process). */
UL_EXTERN int ul_process_watch(ul_loop *loop, pid_t pid, ul_exit_cb cb,
                               void *arg, ul_process **process_out);

UL_EXTERN pid_t ul_process_pid(const ul_process *process);

/* The child's pidfd (owned by the process: dup it to keep it), or -1 when
 * the kernel has none or the child has been reaped.  With it, a signal
 * can still reach the child after ul_loop_close (in the -ECANCELED exit
 * callback: dup it there) without ever hitting a recycled pid. */
UL_EXTERN int ul_process_pidfd(const ul_process *process);

/* 1 once the exit callback has run (or is running), else 0. */
UL_EXTERN int ul_process_exited(const ul_process *process);

/* The returncode given to the exit callback; meaningful once
 * ul_process_exited() is 1. */
UL_EXTERN int ul_process_returncode(const ul_process *process);

/* Sends a signal (pidfd_send_signal when the process has a pidfd, so a
 * recycled pid is never hit).  Errors: -EINVAL (NULL, bad signal), -ESRCH
 * (the child has exited: its status was reaped), -EPERM. */
UL_EXTERN int ul_process_send_signal(ul_process *process, int signum);
UL_EXTERN int ul_process_terminate(ul_process *process);  /* SIGTERM */
UL_EXTERN int ul_process_kill(ul_process *process);       /* SIGKILL */

/* Releases the process: its exit callback will not run after this returns.
 * A child still running is not signalled; it stays watched (by a reaper
 * thread if its loop closes first) and is reaped when it exits, so no
 * zombie is left.  The pointer is invalid afterwards.  May be called from
 * the exit callback.  ul_loop_close() frees every process of the loop: one
 * whose exit callback has not run gets it first (-ECANCELED while the child
 * still runs: it is then reaped by a thread when it exits; ul_process_pidfd
 * is still valid in that callback); do not call ul_process_close() after
 * ul_loop_close().  Errors: -EINVAL. */
UL_EXTERN int ul_process_close(ul_process *process);

/* The loop and the arg given at spawn / watch. */
UL_EXTERN ul_loop *ul_process_get_loop(const ul_process *process);
UL_EXTERN void *ul_process_get_arg(const ul_process *process);

#ifdef __cplusplus
}
#endif

#endif /* UNIXLOOP_H */
