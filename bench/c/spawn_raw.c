/*
 * spawn_raw.c -- the bare minimum: posix_spawn + waitpid, no event loop.
 * The physical limit spawn_ul.c is held against.  See spawn_common.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <sys/wait.h>

#include "spawn_common.h"

extern char **environ;

int main(int argc, char **argv) {
  struct spawn_args a;
  spawn_parse(argc, argv, &a);
  char *child_argv[] = {a.program, NULL};
  long started = 0, done = 0, running = 0;
  double t0 = spawn_now();
  while (done < a.n) {
    while (running < a.j && started < a.n) {
      pid_t pid;
      int err = posix_spawn(&pid, a.program, NULL, NULL, child_argv, environ);
      if (err != 0) {
        fprintf(stderr, "posix_spawn: %s\n", strerror(err));
        return 1;
      }
      started++;
      running++;
    }
    int status;
    pid_t r = waitpid(-1, &status, 0);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      perror("waitpid");
      return 1;
    }
    running--;
    done++;
  }
  spawn_report(&a, spawn_now() - t0);
  return 0;
}
