/*
 * spawn_common.h -- what spawn_raw.c, spawn_uv.c and spawn_ul.c share, so
 * that the three measure in exactly the same way: the options, the parent's
 * heap, the clock and the one output line.
 *
 *   PROG [-n COUNT] [-j CONCURRENCY] [-m HEAP_MIB] [PROGRAM]
 *
 * Spawns PROGRAM (default /bin/true) COUNT times (default 1000), keeping up
 * to CONCURRENCY children alive at once (default 1: one after another),
 * from a parent holding HEAP_MIB MiB of touched heap (default 0), and
 * prints one line:  spawns_per_s=<rate> n=<count> j=<conc> heap_mib=<mib>
 */
#ifndef SPAWN_COMMON_H
#define SPAWN_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct spawn_args {
  long n;
  long j;
  long heap_mib;
  char *program;
  char *heap;
};

static inline double spawn_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void spawn_parse(int argc, char **argv, struct spawn_args *a) {
  int c;
  a->n = 1000;
  a->j = 1;
  a->heap_mib = 0;
  a->program = "/bin/true";
  while ((c = getopt(argc, argv, "n:j:m:")) != -1) {
    switch (c) {
    case 'n': a->n = atol(optarg); break;
    case 'j': a->j = atol(optarg); break;
    case 'm': a->heap_mib = atol(optarg); break;
    default:
      fprintf(stderr, "usage: %s [-n COUNT] [-j CONC] [-m HEAP_MIB] [PROGRAM]\n",
              argv[0]);
      exit(2);
    }
  }
  if (optind < argc)
    a->program = argv[optind];
  if (a->n < 1 || a->j < 1 || a->heap_mib < 0) {
    fprintf(stderr, "bad arguments\n");
    exit(2);
  }
  a->heap = NULL;
  if (a->heap_mib > 0) {  /* touched: every page resident */
    size_t size = (size_t)a->heap_mib << 20;
    a->heap = malloc(size);
    if (a->heap == NULL) {
      perror("malloc");
      exit(1);
    }
    memset(a->heap, 1, size);
  }
}

static inline void spawn_report(const struct spawn_args *a, double elapsed) {
  printf("spawns_per_s=%.1f n=%ld j=%ld heap_mib=%ld\n",
         (double)a->n / elapsed, a->n, a->j, a->heap_mib);
  free(a->heap);
}

#endif /* SPAWN_COMMON_H */
