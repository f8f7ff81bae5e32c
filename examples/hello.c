/* hello.c -- the smallest libunixloop program.
 *
 * Schedules one callback to run soon and one timer 10 ms later; the timer
 * stops the loop.  Build it with the project (cmake) or by hand:
 *   cc -std=gnu11 -Iinclude examples/hello.c -Lbuild -lunixloop -pthread
 */
#include <stdio.h>
#include <stdlib.h>

#include "unixloop.h"

static void say_hello(ul_loop *loop, void *arg, int status) {
  (void)arg;
  if (status != 0) return; /* -ECANCELED: the loop closed before it ran */
  printf("hello from call_soon (backend: %s)\n", ul_loop_backend_name(loop));
}

static void say_goodbye(ul_loop *loop, void *arg, int status) {
  double *start = arg;
  if (status != 0) return;
  printf("goodbye from call_later after %.1f ms\n",
         (ul_loop_time(loop) - *start) * 1e3);
  ul_loop_stop(loop);
}

int main(void) {
  ul_loop *loop;
  double start;
  int err;

  if ((err = ul_loop_new(&loop, NULL)) < 0) {
    fprintf(stderr, "ul_loop_new: %s\n", ul_strerror(err));
    return 1;
  }
  start = ul_loop_time(loop);
  if ((err = ul_loop_call_soon(loop, say_hello, NULL)) < 0 ||
      (err = ul_loop_call_later(loop, 0.01, say_goodbye, &start, NULL)) < 0 ||
      (err = ul_loop_run(loop)) < 0) {
    fprintf(stderr, "unixloop: %s\n", ul_strerror(err));
    ul_loop_close(loop);
    return 1;
  }
  if ((err = ul_loop_close(loop)) < 0) {
    fprintf(stderr, "ul_loop_close: %s\n", ul_strerror(err));
    return 1;
  }
  return 0;
}
