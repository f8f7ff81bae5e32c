/*
 * spawn.c -- starting a child without copying the parent's memory.
 *
 * clone(CLONE_VM | CLONE_VFORK) runs the child on a small stack of its own
 * inside the parent's address space; the parent thread is suspended until
 * the child calls exec or exits, so the cost does not depend on the
 * parent's heap (fork() copies page tables: 30x slower with a 1 GiB heap).
 *
 * Rules for the child (it shares the parent's memory and its thread's TLS):
 *   - only async-signal-safe calls, no malloc, no locks, no stdio;
 *   - every signal is blocked around clone() so that no handler of the
 *     parent runs in the child; the child resets the handlers to SIG_DFL,
 *     then restores the parent's mask just before exec;
 *   - set-id calls are raw syscalls: glibc's setuid() & co. broadcast to
 *     every thread of the parent (setxid), which must not happen here;
 *   - errors go to the parent through `struct child` in shared memory: the
 *     parent reads it once clone() returns (the child has exec'd or exited).
 *
 * Everything that allocates (the PATH candidates, the sorted pass_fds, the
 * pipes) is prepared in the parent before clone().
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

extern char **environ;

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

/* The child's stack: enough for the child's calls (more under ASan, whose
 * interceptors run there too). */
#if defined(__SANITIZE_ADDRESS__)
#define CHILD_STACK_SIZE (256 * 1024)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CHILD_STACK_SIZE (256 * 1024)
#endif
#endif
#ifndef CHILD_STACK_SIZE
#define CHILD_STACK_SIZE (32 * 1024)
#endif

/* The kernel's struct sigaction for rt_sigaction (no glibc translation, so
 * glibc's reserved signals 32 and 33 are left alone as they should be). */
struct kernel_sigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)(void);
  uint64_t mask;
};

/* What the parent prepares and the child reads; the child writes `err` and
 * `step` when it fails. */
struct child {
  const ul_spawn_options *opt;
  char *const *candidates;   /* paths to try with execve, NULL-terminated */
  char *const *envp;
  int src[3];                /* fd to become 0, 1, 2; -1 inherit */
  int stderr_to_stdout;
  int *pass_fds;             /* sorted */
  size_t npass_fds;
  sigset_t parent_mask;
  volatile int err;          /* positive errno */
  volatile int step;         /* ul_spawn_step */
};

static int child_fail(struct child *c, int step, int err) {
  c->step = step;
  c->err = err;
  _exit(127);
}

/* Parses 16 hex digits (a "SigCgt:\t..." field of /proc/<pid>/status).
 * Returns 0 and *v, or -1. */
static int parse_sigmask(const char *p, const char *end, uint64_t *v) {
  uint64_t x = 0;
  int n = 0;
  for (; p < end && n < 16; p++, n++) {
    char ch = *p;
    unsigned d;
    if (ch >= '0' && ch <= '9')
      d = (unsigned)(ch - '0');
    else if (ch >= 'a' && ch <= 'f')
      d = (unsigned)(ch - 'a' + 10);
    else
      return -1;
    x = x << 4 | d;
  }
  if (n != 16)
    return -1;
  *v = x;
  return 0;
}

/* Finds "\n<name>\t" in buf[0..len) and parses the mask after it. */
static int find_sigmask(const char *buf, size_t len, const char *name,
                        uint64_t *v) {
  size_t nlen = 0;
  while (name[nlen] != '\0')
    nlen++;
  for (size_t i = 0; i + nlen + 2 <= len; i++) {
    if (buf[i] != '\n')
      continue;
    size_t k = 0;
    while (k < nlen && buf[i + 1 + k] == name[k])
      k++;
    if (k == nlen && buf[i + 1 + nlen] == '\t')
      return parse_sigmask(buf + i + 2 + nlen, buf + len, v);
  }
  return -1;
}

/* The child's own dispositions (a copy of the parent's, taken by clone):
 * which signals have a handler, which are ignored.  One read of
 * /proc/self/status costs less than a query per signal (64 syscalls);
 * -1 when /proc cannot tell (not mounted, another pid namespace). */
static int child_sigmasks(uint64_t *caught, uint64_t *ignored) {
  char buf[4096];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return -1;
  size_t len = 0;
  int found = -1;
  while (len < sizeof buf) {  /* procfs gives it all in one read */
    ssize_t n = read(fd, buf + len, sizeof buf - len);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    len += (size_t)n;
    if (find_sigmask(buf, len, "SigIgn:", ignored) == 0 &&
        find_sigmask(buf, len, "SigCgt:", caught) == 0) {
      found = 0;
      break;
    }
  }
  close(fd);
  return found;
}

static void child_reset_signals(const struct child *c) {
  struct kernel_sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.handler = SIG_DFL;
  int restore = (c->opt->flags & UL_SPAWN_RESTORE_SIGNALS) != 0;
  uint64_t caught, ignored;
  if (child_sigmasks(&caught, &ignored) == 0) {
    if (restore)
      caught |= ignored & ((UINT64_C(1) << (SIGPIPE - 1)) |
                           (UINT64_C(1) << (SIGXFSZ - 1)));
    for (int sig = 1; sig < UL__NSIG && caught != 0; sig++) {
      uint64_t bit = UINT64_C(1) << (sig - 1);
      if (!(caught & bit))
        continue;
      caught &= ~bit;
      if (sig != SIGKILL && sig != SIGSTOP)
        syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof dfl.mask);
    }
    return;
  }
  for (int sig = 1; sig < UL__NSIG; sig++) {
    struct kernel_sigaction old;
    if (sig == SIGKILL || sig == SIGSTOP)
      continue;
    if (syscall(SYS_rt_sigaction, sig, NULL, &old, sizeof old.mask) != 0)
      continue;
    if (old.handler == SIG_DFL)
      continue;
    if (old.handler == SIG_IGN &&
        !(restore && (sig == SIGPIPE || sig == SIGXFSZ)))
      continue;
    syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof dfl.mask);
  }
}

static long close_range_syscall(unsigned lo, unsigned hi) {
#ifdef SYS_close_range
  return syscall(SYS_close_range, lo, hi, 0);
#else
  (void)lo;
  (void)hi;
  errno = ENOSYS;
  return -1;
#endif
}

/* The highest fd that may be open, for closing one by one. */
static unsigned child_max_fd(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < 65536)
    return (unsigned)rl.rlim_cur - 1;
  return 65535;
}

/* Closes every fd >= 3 not in pass_fds (sorted). */
static void child_close_fds(const struct child *c) {
  unsigned lo = 3;
  for (size_t i = 0; i <= c->npass_fds; i++) {
    unsigned hi = i < c->npass_fds ? (unsigned)c->pass_fds[i] : ~0U;
    if (hi < lo)
      continue;
    if (hi > lo) {
      unsigned last = hi == ~0U ? ~0U : hi - 1;
      if (close_range_syscall(lo, last) != 0) {
        /* No close_range (Linux < 5.9): one close per possible fd. */
        unsigned max_fd = child_max_fd();
        unsigned end = last > max_fd ? max_fd : last;
        for (unsigned fd = lo; fd <= end; fd++)
          close((int)fd);
      }
    }
    if (hi == ~0U)
      break;
    lo = hi + 1;
  }
}

static int child_main(void *arg) {
  struct child *c = arg;
  const ul_spawn_options *o = c->opt;
  int src[3] = {c->src[0], c->src[1], c->src[2]};

  child_reset_signals(c);

  if ((o->flags & UL_SPAWN_NEW_SESSION) && setsid() == -1)
    child_fail(c, UL_SPAWN_STEP_SETUP, errno);
  if ((o->flags & UL_SPAWN_PROCESS_GROUP) && setpgid(0, o->process_group))
    child_fail(c, UL_SPAWN_STEP_SETUP, errno);

  /* stdio: first move sources that sit on another of 0..2 out of the way,
   * then dup2 each into place (dup2 clears close-on-exec; a source already
   * in place only needs the flag cleared). */
  for (int i = 0; i < 3; i++) {
    if (src[i] >= 0 && src[i] < 3 && src[i] != i) {
      src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3);
      if (src[i] == -1)
        child_fail(c, UL_SPAWN_STEP_SETUP, errno);
    }
  }
  for (int i = 0; i < 3; i++) {
    if (src[i] < 0)
      continue;
    if (src[i] == i) {
      if (fcntl(i, F_SETFD, 0) == -1)
        child_fail(c, UL_SPAWN_STEP_SETUP, errno);
    } else if (dup2(src[i], i) == -1) {
      child_fail(c, UL_SPAWN_STEP_SETUP, errno);
    }
  }
  if (c->stderr_to_stdout && dup2(1, 2) == -1)
    child_fail(c, UL_SPAWN_STEP_SETUP, errno);

  if (o->cwd != NULL && chdir(o->cwd) == -1)
    child_fail(c, UL_SPAWN_STEP_SETUP, errno);
  if (o->flags & UL_SPAWN_UMASK)
    umask(o->umask);
  if ((o->flags & UL_SPAWN_SETGROUPS) &&
      syscall(SYS_setgroups, o->ngroups, o->groups) != 0)
    child_fail(c, UL_SPAWN_STEP_SETUP, errno);
  if ((o->flags & UL_SPAWN_SETGID) &&
      syscall(SYS_setresgid, o->gid, o->gid, o->gid) != 0)
    child_fail(c, UL_SPAWN_STEP_SETUP, errno);
  if ((o->flags & UL_SPAWN_SETUID) &&
      syscall(SYS_setresuid, o->uid, o->uid, o->uid) != 0)
    child_fail(c, UL_SPAWN_STEP_SETUP, errno);

  for (size_t i = 0; i < c->npass_fds; i++) {
    int fd = c->pass_fds[i];
    if (fd > 2 && fcntl(fd, F_SETFD, 0) == -1)
      child_fail(c, UL_SPAWN_STEP_SETUP, errno);
  }
  if (o->flags & UL_SPAWN_CLOSE_FDS)
    child_close_fds(c);

  sigprocmask(SIG_SETMASK, &c->parent_mask, NULL);

  /* As execvp: the first error that is not "not there" wins. */
  int saved = 0, last = ENOENT;
  for (char *const *p = c->candidates; *p != NULL; p++) {
    execve(*p, o->argv, c->envp);
    last = errno;
    if (last != ENOENT && last != ENOTDIR && saved == 0)
      saved = last;
  }
  return child_fail(c, UL_SPAWN_STEP_EXEC, saved ? saved : last);
}

/* ---- the parent's preparations -------------------------------------------- */

static const char *env_path(char *const *envp) {
  if (envp == NULL)
    return getenv("PATH");
  for (char *const *e = envp; *e != NULL; e++)
    if (strncmp(*e, "PATH=", 5) == 0)
      return *e + 5;
  return NULL;
}

/* The paths execve will try: `file` itself when it has a '/', else each
 * directory of PATH (os.defpath when unset) joined with it.  One block:
 * the pointer array followed by the strings. */
static char **make_candidates(const char *file, char *const *envp) {
  if (strchr(file, '/') != NULL) {
    char **v = malloc(2 * sizeof *v);
    if (v == NULL)
      return NULL;
    v[0] = (char *)file;
    v[1] = NULL;
    return v;
  }
  const char *path = env_path(envp);
  if (path == NULL)
    path = "/bin:/usr/bin";
  size_t flen = strlen(file), n = 1, bytes = 0;
  for (const char *s = path; *s; s++)
    n += *s == ':';
  bytes = (n + 1) * sizeof(char *) + strlen(path) + n * (flen + 3);
  char **v = malloc(bytes);
  if (v == NULL)
    return NULL;
  char *out = (char *)(v + n + 1);
  size_t k = 0;
  const char *dir = path;
  for (;;) {
    const char *end = strchr(dir, ':');
    size_t dlen = end ? (size_t)(end - dir) : strlen(dir);
    v[k++] = out;
    if (dlen == 0) {              /* an empty entry is the cwd */
      memcpy(out, file, flen + 1);
      out += flen + 1;
    } else {
      memcpy(out, dir, dlen);
      out[dlen] = '/';
      memcpy(out + dlen + 1, file, flen + 1);
      out += dlen + flen + 2;
    }
    if (end == NULL)
      break;
    dir = end + 1;
  }
  v[k] = NULL;
  return v;
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

static void close_saving_errno(int fd) {
  if (fd >= 0) {
    int saved = errno;
    close(fd);
    errno = saved;
  }
}

static int spawn(const ul_spawn_options *o, ul_spawn_result *r, int want_pidfd) {
  if (r == NULL)
    return -EINVAL;
  r->pid = -1;
  r->pidfd = -1;
  r->failed_step = UL_SPAWN_STEP_PARENT;
  for (int i = 0; i < 3; i++)
    r->stdio_fds[i] = -1;
  if (o == NULL || o->argv == NULL || o->argv[0] == NULL)
    return -EINVAL;
  if (o->npass_fds > 0 && o->pass_fds == NULL)
    return -EINVAL;
  if ((o->flags & UL_SPAWN_SETGROUPS) && o->ngroups > 0 && o->groups == NULL)
    return -EINVAL;
  for (int i = 0; i < 3; i++) {
    ul_stdio_mode m = o->stdio[i].mode;
    if (m > UL_STDIO_STDOUT || (m == UL_STDIO_STDOUT && i != 2) ||
        (m == UL_STDIO_FD && o->stdio[i].fd < 0))
      return -EINVAL;
  }
  for (size_t i = 0; i < o->npass_fds; i++)
    if (o->pass_fds[i] < 0)
      return -EBADF;

  struct child c;
  memset(&c, 0, sizeof c);
  c.opt = o;
  c.envp = o->envp != NULL ? o->envp : environ;
  int err = 0, devnull = -1, child_end[3] = {-1, -1, -1};
  char **candidates = NULL;
  int *pass = NULL;
  void *stack = NULL;

  candidates = make_candidates(o->file ? o->file : o->argv[0], o->envp);
  if (candidates == NULL) {
    err = -ENOMEM;
    goto out;
  }
  c.candidates = candidates;
  if (o->npass_fds > 0) {
    pass = malloc(o->npass_fds * sizeof *pass);
    if (pass == NULL) {
      err = -ENOMEM;
      goto out;
    }
    memcpy(pass, o->pass_fds, o->npass_fds * sizeof *pass);
    qsort(pass, o->npass_fds, sizeof *pass, cmp_int);
  }
  c.pass_fds = pass;
  c.npass_fds = o->npass_fds;
  for (int i = 0; i < 3; i++) {
    c.src[i] = -1;
    switch (o->stdio[i].mode) {
    case UL_STDIO_INHERIT:
      break;
    case UL_STDIO_FD:
      c.src[i] = o->stdio[i].fd;
      break;
    case UL_STDIO_STDOUT:
      c.stderr_to_stdout = 1;
      break;
    case UL_STDIO_DEVNULL:
      if (devnull == -1) {
        devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull == -1) {
          err = -errno;
          goto out;
        }
      }
      c.src[i] = devnull;
      break;
    case UL_STDIO_PIPE: {
      int fds[2];
      if (pipe2(fds, O_CLOEXEC) == -1) {
        err = -errno;
        goto out;
      }
      int mine = i == 0 ? fds[1] : fds[0];
      child_end[i] = i == 0 ? fds[0] : fds[1];
      r->stdio_fds[i] = mine;
      c.src[i] = child_end[i];
      /* Just made: its only status flag is the access mode, which
       * F_SETFL leaves alone. */
      if (fcntl(mine, F_SETFL, O_NONBLOCK) == -1) {
        err = -errno;
        goto out;
      }
      break;
    }
    }
  }

  stack = malloc(CHILD_STACK_SIZE);
  if (stack == NULL) {
    err = -ENOMEM;
    goto out;
  }

  /* No handler of the parent may run in the child: block everything until
   * the child has reset the dispositions. */
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &c.parent_mask);
  int flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
  int pidfd = -1;
  pid_t pid = -1;
  int clone_errno = 0;
  char *top = (char *)stack + CHILD_STACK_SIZE;
  if (want_pidfd) {
    pid = clone(child_main, top, flags | CLONE_PIDFD, &c, &pidfd);
    if (pid == -1 && errno == EINVAL) {  /* Linux < 5.2 */
      pidfd = -1;
      pid = clone(child_main, top, flags, &c);
    }
  } else {
    pid = clone(child_main, top, flags, &c);
  }
  if (pid == -1)
    clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &c.parent_mask, NULL);
  if (pid == -1) {
    err = -clone_errno;
    goto out;
  }

  if (c.err != 0) {
    /* The child failed and has exited: reap it now. */
    int status;
    while (waitpid(pid, &status, __WALL) == -1 && errno == EINTR)
      ;
    close_saving_errno(pidfd);
    r->failed_step = c.step;
    err = -c.err;
    goto out;
  }
  if (want_pidfd && pidfd == -1) {
    pidfd = ul__pidfd_open(pid);
  }
  r->pid = pid;
  r->pidfd = pidfd;

out:
  free(stack);
  free(candidates);
  free(pass);
  close_saving_errno(devnull);
  for (int i = 0; i < 3; i++) {
    close_saving_errno(child_end[i]);
    if (err != 0) {
      close_saving_errno(r->stdio_fds[i]);
      r->stdio_fds[i] = -1;
    }
  }
  return err;
}

int ul_spawn(const ul_spawn_options *options, ul_spawn_result *result) {
  return spawn(options, result, 0);
}

int ul_spawn_pidfd(const ul_spawn_options *options, ul_spawn_result *result) {
  return spawn(options, result, 1);
}
