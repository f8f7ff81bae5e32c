/*
 * spawn_cat_raw.c -- the physical limit of the Python `communicate`
 * workload: posix_spawnp("cat") with a stdin and a stdout pipe, write 64
 * bytes, close stdin, read stdout to EOF, waitpid; one child after another,
 * no event loop, no Python.  Same options and output line as the other
 * spawn_*.c (spawn_common.h); -j is ignored (always 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include "spawn_common.h"

extern char **environ;

int main(int argc, char **argv) {
  struct spawn_args a;
  spawn_parse(argc, argv, &a);
  char *child_argv[] = {"cat", NULL};
  char msg[64], buf[256];
  memset(msg, 'x', sizeof msg);
  double t0 = spawn_now();
  for (long i = 0; i < a.n; i++) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) == -1 || pipe2(out, O_CLOEXEC) == -1) {
      perror("pipe2");
      return 1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    pid_t pid;
    int err = posix_spawnp(&pid, "cat", &fa, NULL, child_argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (err != 0) {
      fprintf(stderr, "posix_spawnp: %s\n", strerror(err));
      return 1;
    }
    close(in[0]);
    close(out[1]);
    if (write(in[1], msg, sizeof msg) != (ssize_t)sizeof msg) {
      perror("write");
      return 1;
    }
    close(in[1]);
    size_t got = 0;
    for (;;) {
      ssize_t r = read(out[0], buf, sizeof buf);
      if (r == -1 && errno == EINTR)
        continue;
      if (r <= 0)
        break;
      got += (size_t)r;
    }
    close(out[0]);
    int status;
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
      ;
    if (got != sizeof msg || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "cat: got %zu bytes, status %d\n", got, status);
      return 1;
    }
  }
  spawn_report(&a, spawn_now() - t0);
  return 0;
}
