/*
 * process.c -- watched children and the child watchers of the seed.
 *
 * Each loop watches its children one way (ul_loop_set_child_watcher):
 *
 *   pidfd   the child's pidfd on the loop's poller; readable = exited;
 *           waitid(P_PIDFD) reaps exactly that child.
 *   safe    the loop's SIGCHLD handler (signal.c) calls waitpid(pid,
 *           WNOHANG) for each child of the loop.
 *   fast    the SIGCHLD handler calls waitpid(-1, WNOHANG) until nothing is
 *           left; children not registered yet are kept as "zombies" while a
 *           spawn is in progress (the seed's FastChildWatcher).
 *   multi   the SIGCHLD handler of any such loop calls waitpid(pid) for the
 *           children of every such loop, in any thread.
 *   thread  a thread per child blocked in waitpid(pid).
 *
 * fast, multi and thread reap in a thread that may not own the child's
 * loop: they store the status under `reg_lock` and post the delivery with
 * ul_loop_call_soon_threadsafe.  A post that fails (the loop is closing)
 * leaves the process in state LOST, which ul__processes_close_all reports.
 *
 * A process lives on its loop's list until it is freed: when the user
 * closes it after its exit was reported, or when the exit is reported after
 * the user closed it, or at ul_loop_close.  A child still running when its
 * loop closes is handed to a detached reaper thread, so no zombie is left.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

enum state {
  WATCHING,  /* the child may still be running */
  REAPED,    /* status known, delivery queued (or being delivered) */
  LOST       /* status known, the delivery could not be queued */
};

struct waiter;

struct ul_process {
  ul_loop *loop;
  ul_exit_cb cb;
  void *arg;
  pid_t pid;
  int pidfd;
  int watcher;          /* ul_child_watcher */
  int state;            /* enum state; under reg_lock for fast/multi/thread */
  int returncode;
  int elsewhere;        /* ECHILD: reaped by other code */
  int reported;         /* the exit callback ran */
  int closed;           /* ul_process_close was called */
  int in_cb;
  int pending;          /* a delivery is queued on the loop */
  struct waiter *waiter;  /* thread watcher */
  pthread_t thread;
  int has_thread;
  ul_process *next, *prev;  /* the loop's list */
  ul_process *hnext;        /* reg[] chain (fast, multi) */
};

/* ---- process-wide state: fast and multi registry, thread waiters ------- */

#define REG_BUCKETS 1024

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static ul_process *reg[REG_BUCKETS];
static size_t reg_multi;           /* multi children in reg[] */
static int forks_in_progress;      /* fast: spawns not yet registered */
static struct zombie {
  pid_t pid;
  int returncode;
} *zombies;
static size_t nzombies, zombies_cap;

struct waiter {
  pid_t pid;
  ul_process *process;  /* NULL once orphaned (the loop closed) */
};

int ul__pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

static int pidfd_supported(void) {
  static atomic_int known;  /* 0 unknown, 1 yes, 2 no */
  int k = atomic_load(&known);
  if (k == 0) {
    int fd = ul__pidfd_open(getpid());
    k = fd >= 0 ? 1 : 2;
    if (fd >= 0)
      close(fd);
    atomic_store(&known, k);
  }
  return k == 1;
}

static int returncode_of(int status) {
  if (WIFSIGNALED(status))
    return -WTERMSIG(status);
  if (WIFEXITED(status))
    return WEXITSTATUS(status);
  return status;  /* not reached: no WUNTRACED */
}

/* waitpid(pid, WNOHANG): 1 and *rc when reaped (255 and *elsewhere on
 * ECHILD), 0 while it runs. */
static int try_reap(pid_t pid, int *rc, int *elsewhere) {
  int status;
  pid_t r;
  do
    r = waitpid(pid, &status, WNOHANG);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    return 0;
  if (r == -1) {
    *rc = 255;
    *elsewhere = 1;
    return 1;
  }
  *rc = returncode_of(status);
  return 1;
}

/* ---- freeing and reporting ---------------------------------------------- */

static void unlink_process(ul_process *p) {
  ul_loop *loop = p->loop;
  if (p->prev != NULL)
    p->prev->next = p->next;
  else
    loop->processes = p->next;
  if (p->next != NULL)
    p->next->prev = p->prev;
}

static void free_process(ul_process *p) {
  unlink_process(p);
  if (p->pidfd >= 0) {
    ul_loop_remove_reader(p->loop, p->pidfd);
    close(p->pidfd);
  }
  free(p);
}

static void join_waiter(ul_process *p) {
  if (p->has_thread) {
    pthread_join(p->thread, NULL);
    p->has_thread = 0;
  }
}

/* Runs the exit callback (unless closed), then frees the process if the
 * user closed it. */
static void report(ul_process *p) {
  if (p->elsewhere) {
    char msg[128];
    snprintf(msg, sizeof msg,
             "Unknown child process pid %d, will report returncode 255",
             (int)p->pid);
    ul_loop_report_error(p->loop, -ECHILD, msg);
  }
  p->reported = 1;
  if (!p->closed) {
    p->in_cb = 1;
    p->cb(p, p->returncode, p->arg);
    p->in_cb = 0;
  }
  if (p->closed)
    free_process(p);
}

/* A queued delivery.  At ul_loop_close (status -ECANCELED) the status is
 * known all the same, so it is reported as it is. */
static void deliver_cb(ul_loop *loop, void *arg, int status) {
  ul_process *p = arg;
  (void)loop;
  (void)status;
  p->pending = 0;
  join_waiter(p);
  report(p);
}

/* The status of a child of `p->loop` is known, on the loop's thread. */
static void exited_here(ul_process *p, int rc) {
  p->state = REAPED;
  p->returncode = rc;
  if (p->pidfd >= 0) {
    ul_loop_remove_reader(p->loop, p->pidfd);
    close(p->pidfd);
    p->pidfd = -1;
  }
  p->pending = 1;
  if (ul_loop_call_soon(p->loop, deliver_cb, p) != 0) {
    p->pending = 0;
    p->state = LOST;
  }
}

/* The same from any thread; called with reg_lock held. */
static void exited_anywhere(ul_process *p, int rc, int elsewhere,
                            ul_loop *current) {
  p->returncode = rc;
  p->elsewhere = elsewhere;
  p->state = REAPED;
  p->pending = 1;
  int err = p->loop == current ? ul_loop_call_soon(p->loop, deliver_cb, p)
                               : ul_loop_call_soon_threadsafe(p->loop,
                                                              deliver_cb, p);
  if (err != 0) {
    p->pending = 0;
    p->state = LOST;
  }
}

/* ---- orphans: children whose loop closed ------------------------------ */

struct orphan {
  pid_t pid;
  int pidfd;
};

static void *orphan_main(void *arg) {
  struct orphan *o = arg;
  int status;
  while (waitpid(o->pid, &status, 0) == -1 && errno == EINTR)
    ;
  if (o->pidfd >= 0)
    close(o->pidfd);
  free(o);
  return NULL;
}

static int start_thread(pthread_t *t, void *(*fn)(void *), void *arg) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
#if !defined(__SANITIZE_ADDRESS__)
  pthread_attr_setstacksize(&attr, 64 * 1024 > PTHREAD_STACK_MIN
                                       ? 64 * 1024
                                       : PTHREAD_STACK_MIN);
#endif
  /* The thread must not run a handler meant for the loop's thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = pthread_create(t, &attr, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  return -err;
}

/* Reaps a child nobody watches any more: now if it has exited, else in a
 * detached thread.  Takes the pidfd. */
static void reap_later(pid_t pid, int pidfd) {
  int rc, elsewhere = 0;
  if (try_reap(pid, &rc, &elsewhere)) {
    if (pidfd >= 0)
      close(pidfd);
    return;
  }
  struct orphan *o = malloc(sizeof *o);
  pthread_t t;
  if (o != NULL) {
    o->pid = pid;
    o->pidfd = pidfd;
    if (start_thread(&t, orphan_main, o) == 0) {
      pthread_detach(t);
      return;
    }
    free(o);
  }
  if (pidfd >= 0)  /* no thread: a zombie is the lesser evil than a hang */
    close(pidfd);
}

/* ---- pidfd ---------------------------------------------------------------- */

static void on_pidfd(ul_loop *loop, int fd, int events, void *arg) {
  ul_process *p = arg;
  siginfo_t info;
  int r;
  (void)events;
  memset(&info, 0, sizeof info);
  do
    r = waitid((idtype_t)P_PIDFD, (id_t)fd, &info, WEXITED | WNOHANG);
  while (r == -1 && errno == EINTR);
  int rc;
  if (r == -1) {
    if (errno != ECHILD) {
      /* Kernel without waitid(P_PIDFD) (Linux < 5.4). */
      int elsewhere = 0;
      if (!try_reap(p->pid, &rc, &elsewhere))
        return;
      p->elsewhere = elsewhere;
    } else {
      rc = 255;
      p->elsewhere = 1;
    }
  } else if (info.si_pid == 0) {
    return;  /* not yet */
  } else {
    rc = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
  }
  ul_loop_remove_reader(loop, fd);
  close(fd);
  p->pidfd = -1;
  p->state = REAPED;
  p->returncode = rc;
  report(p);
}

/* ---- safe / fast / multi: SIGCHLD ------------------------------------------ */

static unsigned bucket(pid_t pid) { return (unsigned)pid % REG_BUCKETS; }

static void reg_add(ul_process *p) {
  unsigned b = bucket(p->pid);
  p->hnext = reg[b];
  reg[b] = p;
  if (p->watcher == UL_WATCHER_MULTI)
    reg_multi++;
}

/* Removes p from reg[] if it is there; returns 1 if it was. */
static int reg_remove(ul_process *p) {
  for (ul_process **l = &reg[bucket(p->pid)]; *l != NULL; l = &(*l)->hnext) {
    if (*l == p) {
      *l = p->hnext;
      p->hnext = NULL;
      if (p->watcher == UL_WATCHER_MULTI)
        reg_multi--;
      return 1;
    }
  }
  return 0;
}

static ul_process *reg_find(pid_t pid) {
  for (ul_process *p = reg[bucket(pid)]; p != NULL; p = p->hnext)
    if (p->pid == pid)
      return p;
  return NULL;
}

static void zombies_add(pid_t pid, int rc) {
  if (nzombies == zombies_cap) {
    size_t cap = zombies_cap ? 2 * zombies_cap : 16;
    struct zombie *z = realloc(zombies, cap * sizeof *z);
    if (z == NULL)
      return;  /* the status is lost; its process will report 255 */
    zombies = z;
    zombies_cap = cap;
  }
  zombies[nzombies].pid = pid;
  zombies[nzombies].returncode = rc;
  nzombies++;
}

/* 1 and *rc if pid was reaped before it was registered. */
static int zombies_take(pid_t pid, int *rc) {
  for (size_t i = 0; i < nzombies; i++) {
    if (zombies[i].pid == pid) {
      *rc = zombies[i].returncode;
      zombies[i] = zombies[--nzombies];
      return 1;
    }
  }
  return 0;
}

/* fast: waitpid(-1) until no exited child is left.  With reg_lock. */
static void reap_any(ul_loop *loop) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid == -1 && errno == EINTR)
      continue;
    if (pid <= 0)
      return;
    int rc = returncode_of(status);
    ul_process *p = reg_find(pid);
    if (p != NULL) {
      reg_remove(p);
      exited_anywhere(p, rc, 0, loop);
    } else if (forks_in_progress > 0) {
      zombies_add(pid, rc);  /* may be registered in a moment */
    } else {
      char msg[128];
      snprintf(msg, sizeof msg,
               "Caught subprocess termination from unknown pid: %d -> %d",
               (int)pid, rc);
      ul_loop_report_error(loop, 0, msg);
    }
  }
}

/* multi: waitpid(pid) for every child registered by a multi loop.  With
 * reg_lock. */
static void reap_multi(ul_loop *loop) {
  if (reg_multi == 0)
    return;
  for (unsigned b = 0; b < REG_BUCKETS; b++) {
    ul_process **l = &reg[b];
    while (*l != NULL) {
      ul_process *p = *l;
      int rc, elsewhere = 0;
      if (p->watcher == UL_WATCHER_MULTI && try_reap(p->pid, &rc, &elsewhere)) {
        *l = p->hnext;
        p->hnext = NULL;
        reg_multi--;
        exited_anywhere(p, rc, elsewhere, loop);
      } else {
        l = &p->hnext;
      }
    }
  }
}

/* safe: waitpid(pid) for each child of this loop. */
static void reap_safe(ul_loop *loop) {
  for (ul_process *p = loop->processes; p != NULL; p = p->next) {
    int rc, elsewhere = 0;
    if (p->watcher != UL_WATCHER_SAFE || p->state != WATCHING)
      continue;
    if (try_reap(p->pid, &rc, &elsewhere)) {
      p->elsewhere = elsewhere;
      exited_here(p, rc);
    }
  }
}

void ul__process_sigchld(ul_loop *loop) {
  reap_safe(loop);
  pthread_mutex_lock(&reg_lock);
  if (loop->child_watcher == UL_WATCHER_FAST)
    reap_any(loop);
  reap_multi(loop);
  pthread_mutex_unlock(&reg_lock);
}

static void on_sigchld(ul_loop *loop, int signum, void *arg) {
  (void)signum;
  (void)arg;
  ul__process_sigchld(loop);
}

/* ---- thread ---------------------------------------------------------------- */

static void *waiter_main(void *arg) {
  struct waiter *w = arg;
  int status, rc, elsewhere = 0;
  pid_t r;
  do
    r = waitpid(w->pid, &status, 0);
  while (r == -1 && errno == EINTR);
  if (r == -1) {
    rc = 255;
    elsewhere = 1;
  } else {
    rc = returncode_of(status);
  }
  pthread_mutex_lock(&reg_lock);
  ul_process *p = w->process;
  if (p != NULL) {
    p->waiter = NULL;
    exited_anywhere(p, rc, elsewhere, NULL);
  }
  pthread_mutex_unlock(&reg_lock);
  free(w);
  return NULL;
}

/* ---- the watcher of a loop ------------------------------------------------- */

static int resolve_watcher(ul_loop *loop) {
  if (loop->child_watcher == UL_WATCHER_DEFAULT)
    loop->child_watcher =
        pidfd_supported() ? UL_WATCHER_PIDFD : UL_WATCHER_THREAD;
  return loop->child_watcher;
}

static int needs_sigchld(int watcher) {
  return watcher == UL_WATCHER_SAFE || watcher == UL_WATCHER_FAST ||
         watcher == UL_WATCHER_MULTI;
}

int ul_loop_set_child_watcher(ul_loop *loop, ul_child_watcher watcher) {
  if (loop == NULL || (int)watcher < 0 || watcher > UL_WATCHER_MULTI)
    return -EINVAL;
  if (loop->processes != NULL)
    return -EBUSY;
  if (watcher == UL_WATCHER_PIDFD && !pidfd_supported())
    return -ENOSYS;
  if (loop->sigchld_on && !needs_sigchld(watcher)) {
    ul_loop_remove_signal_handler(loop, SIGCHLD);
    loop->sigchld_on = 0;
  }
  loop->child_watcher = watcher;
  resolve_watcher(loop);
  return 0;
}

ul_child_watcher ul_loop_get_child_watcher(const ul_loop *loop) {
  if (loop->child_watcher != UL_WATCHER_DEFAULT)
    return (ul_child_watcher)loop->child_watcher;
  return pidfd_supported() ? UL_WATCHER_PIDFD : UL_WATCHER_THREAD;
}

/* Everything a watcher needs before the child exists. */
static int prepare(ul_loop *loop) {
  int watcher = resolve_watcher(loop);
  if (needs_sigchld(watcher) && !loop->sigchld_on) {
    int err = ul_loop_add_signal_handler(loop, SIGCHLD, on_sigchld, NULL);
    if (err)
      return err;
    loop->sigchld_on = 1;
  }
  return 0;
}

static ul_process *new_process(ul_loop *loop, ul_exit_cb cb, void *arg) {
  ul_process *p = calloc(1, sizeof *p);
  if (p == NULL)
    return NULL;
  p->loop = loop;
  p->cb = cb;
  p->arg = arg;
  p->pid = -1;
  p->pidfd = -1;
  p->watcher = loop->child_watcher;
  p->state = WATCHING;
  return p;
}

static void link_process(ul_process *p) {
  ul_loop *loop = p->loop;
  p->next = loop->processes;
  if (loop->processes != NULL)
    loop->processes->prev = p;
  loop->processes = p;
}

/* Starts watching p->pid (the child exists).  For fast and thread, runs
 * with reg_lock held by the caller when `locked`. */
static int start_watching(ul_process *p) {
  ul_loop *loop = p->loop;
  int err, rc, elsewhere = 0;
  switch (p->watcher) {
  case UL_WATCHER_PIDFD:
    if (p->pidfd < 0) {
      p->pidfd = ul__pidfd_open(p->pid);
      if (p->pidfd < 0)
        return -errno;
    }
    err = ul_loop_add_reader(loop, p->pidfd, on_pidfd, p);
    if (err)
      return err;
    link_process(p);
    return 0;
  case UL_WATCHER_SAFE:
    link_process(p);
    /* A child that exited before the SIGCHLD handler existed. */
    if (try_reap(p->pid, &rc, &elsewhere)) {
      p->elsewhere = elsewhere;
      exited_here(p, rc);
    }
    return 0;
  case UL_WATCHER_FAST:
    link_process(p);
    if (zombies_take(p->pid, &rc))
      exited_anywhere(p, rc, 0, loop);
    else
      reg_add(p);
    return 0;
  case UL_WATCHER_MULTI:
    link_process(p);
    if (try_reap(p->pid, &rc, &elsewhere))
      exited_anywhere(p, rc, elsewhere, loop);
    else
      reg_add(p);
    return 0;
  case UL_WATCHER_THREAD: {
    struct waiter *w = malloc(sizeof *w);
    if (w == NULL)
      return -ENOMEM;
    w->pid = p->pid;
    w->process = p;
    p->waiter = w;
    err = start_thread(&p->thread, waiter_main, w);
    if (err) {
      p->waiter = NULL;
      free(w);
      return err;
    }
    p->has_thread = 1;
    link_process(p);
    return 0;
  }
  }
  return -EINVAL;
}

static int uses_lock(int watcher) {
  return watcher == UL_WATCHER_FAST || watcher == UL_WATCHER_MULTI ||
         watcher == UL_WATCHER_THREAD;
}

void (*ul__spawn_test_hook)(ul_loop *loop, pid_t pid);

/* A fast watcher's spawn ends: unclaimed zombies are reported, as the
 * seed's FastChildWatcher.__exit__ does.  With reg_lock. */
static void fork_done(ul_loop *loop) {
  if (--forks_in_progress > 0 || nzombies == 0)
    return;
  for (size_t i = 0; i < nzombies; i++) {
    char msg[128];
    snprintf(msg, sizeof msg,
             "Caught subprocess termination from unknown pid: %d -> %d",
             (int)zombies[i].pid, zombies[i].returncode);
    ul_loop_report_error(loop, 0, msg);
  }
  nzombies = 0;
}

int ul_process_spawn(ul_loop *loop, const ul_spawn_options *options,
                     ul_exit_cb cb, void *arg, ul_process **process_out,
                     int stdio_fds[3], int *failed_step) {
  if (failed_step != NULL)
    *failed_step = UL_SPAWN_STEP_PARENT;
  if (loop == NULL || cb == NULL || process_out == NULL || options == NULL)
    return -EINVAL;
  if (loop->closing)
    return -ESHUTDOWN;
  int err = prepare(loop);
  if (err)
    return err;
  ul_process *p = new_process(loop, cb, arg);
  if (p == NULL)
    return -ENOMEM;

  int fast = p->watcher == UL_WATCHER_FAST;
  if (fast) {
    pthread_mutex_lock(&reg_lock);
    forks_in_progress++;
    pthread_mutex_unlock(&reg_lock);
  }
  ul_spawn_result r;
  /* A pidfd for every watcher when the kernel has them: signals then never
   * reach a recycled pid. */
  err = pidfd_supported() ? ul_spawn_pidfd(options, &r) : ul_spawn(options, &r);
  if (err == 0) {
    p->pid = r.pid;
    p->pidfd = r.pidfd;
    if (ul__spawn_test_hook != NULL)
      ul__spawn_test_hook(loop, r.pid);
    if (uses_lock(p->watcher))
      pthread_mutex_lock(&reg_lock);
    err = start_watching(p);
    if (uses_lock(p->watcher))
      pthread_mutex_unlock(&reg_lock);
  }
  if (fast) {
    pthread_mutex_lock(&reg_lock);
    fork_done(loop);
    pthread_mutex_unlock(&reg_lock);
  }
  if (err) {
    if (failed_step != NULL)
      *failed_step = r.failed_step;
    if (r.pid > 0) {  /* spawned, but cannot be watched: do not leak it */
      kill(r.pid, SIGKILL);
      reap_later(r.pid, r.pidfd);
      for (int i = 0; i < 3; i++)
        if (r.stdio_fds[i] >= 0)
          close(r.stdio_fds[i]);
    }
    free(p);
    return err;
  }
  if (stdio_fds != NULL) {
    for (int i = 0; i < 3; i++)
      stdio_fds[i] = r.stdio_fds[i];
  } else {
    for (int i = 0; i < 3; i++)
      if (r.stdio_fds[i] >= 0)
        close(r.stdio_fds[i]);
  }
  *process_out = p;
  return 0;
}

int ul_process_watch(ul_loop *loop, pid_t pid, ul_exit_cb cb, void *arg,
                     ul_process **process_out) {
  if (loop == NULL || cb == NULL || process_out == NULL || pid <= 0)
    return -EINVAL;
  if (loop->closing)
    return -ESHUTDOWN;
  int err = prepare(loop);
  if (err)
    return err;
  ul_process *p = new_process(loop, cb, arg);
  if (p == NULL)
    return -ENOMEM;
  p->pid = pid;
  if (p->watcher == UL_WATCHER_PIDFD) {
    p->pidfd = ul__pidfd_open(pid);
    if (p->pidfd < 0) {
      err = -errno;
      free(p);
      return err;
    }
  }
  if (uses_lock(p->watcher))
    pthread_mutex_lock(&reg_lock);
  err = start_watching(p);
  if (uses_lock(p->watcher))
    pthread_mutex_unlock(&reg_lock);
  if (err) {
    if (p->pidfd >= 0)
      close(p->pidfd);
    free(p);
    return err;
  }
  *process_out = p;
  return 0;
}

int ul_process_pidfd(const ul_process *process) {
  return process != NULL ? process->pidfd : -1;
}

pid_t ul_process_pid(const ul_process *process) {
  return process != NULL ? process->pid : -1;
}

int ul_process_exited(const ul_process *process) {
  return process != NULL && process->reported;
}

int ul_process_returncode(const ul_process *process) {
  return process != NULL ? process->returncode : 0;
}

ul_loop *ul_process_get_loop(const ul_process *process) {
  return process != NULL ? process->loop : NULL;
}

void *ul_process_get_arg(const ul_process *process) {
  return process != NULL ? process->arg : NULL;
}

int ul_process_send_signal(ul_process *p, int signum) {
  if (p == NULL || signum < 0 || signum >= UL__NSIG)
    return -EINVAL;
  int gone;
  if (uses_lock(p->watcher)) {
    pthread_mutex_lock(&reg_lock);
    gone = p->state != WATCHING;
    pthread_mutex_unlock(&reg_lock);
  } else {
    gone = p->state != WATCHING;
  }
  if (gone)
    return -ESRCH;
  long r;
#ifdef SYS_pidfd_send_signal
  if (p->pidfd >= 0)
    r = syscall(SYS_pidfd_send_signal, p->pidfd, signum, NULL, 0);
  else
#endif
    r = kill(p->pid, signum);
  return r == 0 ? 0 : -errno;
}

int ul_process_terminate(ul_process *process) {
  return ul_process_send_signal(process, SIGTERM);
}

int ul_process_kill(ul_process *process) {
  return ul_process_send_signal(process, SIGKILL);
}

int ul_process_close(ul_process *p) {
  if (p == NULL)
    return -EINVAL;
  if (p->closed)
    return 0;
  p->closed = 1;
  /* Reported and no delivery in flight: free now (or after the callback
   * that is running returns).  Otherwise the watcher keeps the child until
   * it is reaped, and the delivery frees it. */
  if (p->reported && !p->in_cb)
    free_process(p);
  return 0;
}

/* ---- ul_loop_close ----------------------------------------------------------- */

void ul__processes_close_all(ul_loop *loop) {
  while (loop->processes != NULL) {
    ul_process *p = loop->processes;
    int running;
    if (uses_lock(p->watcher)) {
      pthread_mutex_lock(&reg_lock);
      running = p->state == WATCHING;
      if (running && p->waiter != NULL) {
        /* The thread keeps waiting, reaps the child and frees itself. */
        p->waiter->process = NULL;
        p->waiter = NULL;
        pthread_detach(p->thread);
        p->has_thread = 0;
      } else if (running) {
        reg_remove(p);
      }
      pthread_mutex_unlock(&reg_lock);
      join_waiter(p);
    } else {
      running = p->state == WATCHING;
      if (running && p->pidfd >= 0)
        ul_loop_remove_reader(loop, p->pidfd);
    }
    /* First the callback, while the process (and its pidfd) is valid. */
    if (!p->reported && !p->closed) {
      /* LOST: reaped, but the loop was closing: the status is known. */
      p->reported = 1;
      if (running)
        p->returncode = -ECANCELED;
      p->in_cb = 1;  /* a ul_process_close from the callback frees nothing */
      p->cb(p, p->returncode, p->arg);
      p->in_cb = 0;
    }
    if (running && p->watcher != UL_WATCHER_THREAD) {
      reap_later(p->pid, p->pidfd);  /* takes the pidfd */
      p->pidfd = -1;
    }
    free_process(p);
  }
}
