/*
 * spawn_ul.c -- libunixloop's ul_process_spawn, children watched by the
 * loop's default watcher (a pidfd per child on the poller), or the one
 * named by $UL_WATCHER (pidfd, safe, fast, thread, multi).
 * See spawn_common.h.
 */
#include <unixloop.h>

#include "spawn_common.h"

static struct spawn_args a;
static ul_loop *loop;
static long started, done, running;
static char *child_argv[2];
static ul_spawn_options options;

static void start_more(void);

static void exit_cb(ul_process *p, int returncode, void *arg) {
  (void)returncode;
  (void)arg;
  ul_process_close(p);
  running--;
  done++;
  if (done == a.n)
    ul_loop_stop(loop);
  else
    start_more();
}

static void start_more(void) {
  while (running < a.j && started < a.n) {
    ul_process *p;
    int err = ul_process_spawn(loop, &options, exit_cb, NULL, &p, NULL, NULL);
    if (err != 0) {
      fprintf(stderr, "ul_process_spawn: %s\n", ul_strerror(err));
      exit(1);
    }
    started++;
    running++;
  }
}

int main(int argc, char **argv) {
  spawn_parse(argc, argv, &a);
  child_argv[0] = a.program;
  options.argv = child_argv;
  if (ul_loop_new(&loop, NULL) != 0)
    return 1;
  const char *w = getenv("UL_WATCHER");
  if (w != NULL) {
    static const char *names[] = {"default", "pidfd", "safe", "fast",
                                  "thread", "multi"};
    int found = -1;
    for (int i = 0; i < 6; i++)
      if (strcmp(w, names[i]) == 0)
        found = i;
    if (found < 0 || ul_loop_set_child_watcher(loop, found) != 0) {
      fprintf(stderr, "bad UL_WATCHER %s\n", w);
      return 2;
    }
  }
  double t0 = spawn_now();
  start_more();
  ul_loop_run(loop);
  spawn_report(&a, spawn_now() - t0);
  ul_loop_close(loop);
  return done == a.n ? 0 : 1;
}
