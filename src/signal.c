/*
 * signal.c -- Unix signals as loop callbacks.
 *
 * One process-wide registry: for each signal, a lock-free list of the loops
 * that want it.  The real handler (sig_handler) walks that list, bumps an
 * atomic counter in each loop and wakes the loop through its eventfd; all of
 * that is async-signal-safe.  The loop turns counters into callbacks in its
 * I/O phase.
 *
 * Writers (add / remove) serialise on a mutex.  Lists only change by atomic
 * pointer stores, so a handler running in another thread always sees a
 * consistent list.  A node is unlinked and then the remover waits until no
 * handler is running (handlers_running == 0) before the node's loop may be
 * freed: a handler that loaded the node before the unlink is done with it
 * by then.
 */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(ul__signode *) registry[UL__NSIG];
static struct sigaction saved_action[UL__NSIG];
static int owners[UL__NSIG];            /* loops that handle the signal */
static atomic_int handlers_running;

static void sig_handler(int signum) {
  int saved_errno = errno;
  atomic_fetch_add(&handlers_running, 1);
  for (ul__signode *n = atomic_load(&registry[signum]); n != NULL;
       n = atomic_load(&n->next)) {
    ul__signals *sig = n->loop->signals;
    atomic_fetch_add(&sig->pending[signum], 1);
    atomic_store(&sig->any, 1);
    ul_loop_wakeup(n->loop);
  }
  atomic_fetch_sub(&handlers_running, 1);
  errno = saved_errno;
}

static void wait_for_handlers(void) {
  while (atomic_load(&handlers_running) > 0)
    sched_yield();
}

/* Links the loop into the signal's list, taking the signal over from its
 * current disposition if no loop had it.  Called with registry_lock. */
static int registry_add(ul_loop *loop, int signum) {
  ul__signode *node = &loop->signals->nodes[signum];
  if (owners[signum] == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sig_handler;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    if (sigaction(signum, &sa, &saved_action[signum]) == -1)
      return -errno;
  }
  owners[signum]++;
  node->loop = loop;
  atomic_store(&node->next, atomic_load(&registry[signum]));
  atomic_store(&registry[signum], node);
  return 0;
}

/* Unlinks the loop, giving the signal back when it was the last one.
 * Called with registry_lock. */
static void registry_remove(ul_loop *loop, int signum) {
  ul__signode *node = &loop->signals->nodes[signum];
  _Atomic(ul__signode *) *link = &registry[signum];
  while (atomic_load(link) != node)
    link = &atomic_load(link)->next;
  atomic_store(link, atomic_load(&node->next));
  if (--owners[signum] == 0) {
    /* Give the signal back only if it is still ours: code that installed
     * its own disposition meanwhile keeps it (see unixloop.h). */
    struct sigaction current;
    if (sigaction(signum, NULL, &current) == 0 &&
        !(current.sa_flags & SA_SIGINFO) &&
        current.sa_handler == sig_handler)
      sigaction(signum, &saved_action[signum], NULL);
  }
  wait_for_handlers();
}

static int check_signum(int signum) {
  if (signum < 1 || signum >= UL__NSIG)
    return -EINVAL;
  if (signum == SIGKILL || signum == SIGSTOP)
    return -EPERM;
  return 0;
}

int ul_loop_add_signal_handler(ul_loop *loop, int signum, ul_signal_cb cb,
                               void *arg) {
  if (loop == NULL || cb == NULL)
    return -EINVAL;
  int err = check_signum(signum);
  if (err)
    return err;
  if (loop->closing)
    return -ESHUTDOWN;
  if (loop->signals == NULL) {
    loop->signals = calloc(1, sizeof *loop->signals);
    if (loop->signals == NULL)
      return -ENOMEM;
  }
  ul__signals *sig = loop->signals;
  if (sig->cb[signum] == NULL) {
    pthread_mutex_lock(&registry_lock);
    err = registry_add(loop, signum);
    pthread_mutex_unlock(&registry_lock);
    if (err)
      return err;
  }
  sig->cb[signum] = cb;
  sig->arg[signum] = arg;
  return 0;
}

int ul_loop_remove_signal_handler(ul_loop *loop, int signum) {
  if (loop == NULL || signum < 1 || signum >= UL__NSIG)
    return -EINVAL;
  ul__signals *sig = loop->signals;
  if (sig == NULL || sig->cb[signum] == NULL)
    return 0;
  pthread_mutex_lock(&registry_lock);
  registry_remove(loop, signum);
  pthread_mutex_unlock(&registry_lock);
  sig->cb[signum] = NULL;
  sig->arg[signum] = NULL;
  atomic_store(&sig->pending[signum], 0);
  return 1;
}

/* Runs the callbacks of the signals delivered since the last call. */
void ul__signals_dispatch(ul_loop *loop) {
  ul__signals *sig = loop->signals;
  atomic_store(&sig->any, 0);
  for (int signum = 1; signum < UL__NSIG; signum++) {
    if (atomic_load_explicit(&sig->pending[signum], memory_order_relaxed) ==
        0)
      continue;
    if (atomic_exchange(&sig->pending[signum], 0) == 0)
      continue;
    /* Read again per signal: a callback may remove any handler. */
    if (sig->cb[signum] != NULL)
      sig->cb[signum](loop, signum, sig->arg[signum]);
  }
}

void ul__signals_close(ul_loop *loop) {
  if (loop->signals == NULL)
    return;
  for (int signum = 1; signum < UL__NSIG; signum++)
    ul_loop_remove_signal_handler(loop, signum);
  free(loop->signals);
  loop->signals = NULL;
}
