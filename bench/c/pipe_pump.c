/*
 * pipe_pump.c -- the far end of bench/pipebench.py's pipe workloads: as
 * little work per byte as a program can do, so that the loop under test is
 * what is measured.
 *
 *   pipe_pump -w BYTES   write BYTES to stdout (a pipe), then exit
 *   pipe_pump -r         read stdin until EOF, discard it, print the count
 *
 * Blocking I/O, 1 MiB per call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static char buf[CHUNK];

static int pump_write(long long total) {
  memset(buf, 'p', sizeof buf);
  while (total > 0) {
    size_t n = total < CHUNK ? (size_t)total : CHUNK;
    ssize_t w = write(1, buf, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      perror("pipe_pump: write");
      return 1;
    }
    total -= w;
  }
  return 0;
}

static int pump_read(void) {
  long long total = 0;
  for (;;) {
    ssize_t r = read(0, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      perror("pipe_pump: read");
      return 1;
    }
    if (r == 0)
      break;
    total += r;
  }
  printf("%lld\n", total);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_DFL);
  if (argc == 3 && strcmp(argv[1], "-w") == 0)
    return pump_write(atoll(argv[2]));
  if (argc == 2 && strcmp(argv[1], "-r") == 0)
    return pump_read();
  fprintf(stderr, "usage: pipe_pump -w BYTES | -r\n");
  return 2;
}
