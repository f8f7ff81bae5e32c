/*
 * spawn_uv.c -- libuv's uv_spawn, children watched by its loop (SIGCHLD).
 * See spawn_common.h.
 */
#include <uv.h>

#include "spawn_common.h"

static struct spawn_args a;
static uv_loop_t *loop;
static long started, done, running;
static char *child_argv[2];

static void start_more(void);

static void close_cb(uv_handle_t *h) { free(h); }

static void exit_cb(uv_process_t *p, int64_t status, int signo) {
  (void)status;
  (void)signo;
  uv_close((uv_handle_t *)p, close_cb);
  running--;
  done++;
  start_more();
}

static void start_more(void) {
  while (running < a.j && started < a.n) {
    uv_process_t *p = malloc(sizeof *p);
    uv_process_options_t o;
    memset(&o, 0, sizeof o);
    o.file = a.program;
    o.args = child_argv;
    o.exit_cb = exit_cb;
    int err = uv_spawn(loop, p, &o);
    if (err != 0) {
      fprintf(stderr, "uv_spawn: %s\n", uv_strerror(err));
      exit(1);
    }
    started++;
    running++;
  }
}

int main(int argc, char **argv) {
  spawn_parse(argc, argv, &a);
  child_argv[0] = a.program;
  loop = uv_default_loop();
  double t0 = spawn_now();
  start_more();
  uv_run(loop, UV_RUN_DEFAULT);
  spawn_report(&a, spawn_now() - t0);
  if (done != a.n)
    return 1;
  uv_loop_close(loop);
  return 0;
}
