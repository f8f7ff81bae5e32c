/*
 * _core_process.c -- ChildProcess: a child started by libunixloop's
 * ul_process_spawn (clone(CLONE_VM|CLONE_VFORK), no copy of the parent) and
 * watched by the loop's child watcher (a pidfd on the loop's poller by
 * default).  unixloop's subprocess transport (python/unixloop/_process.py)
 * uses it where asyncio uses subprocess.Popen and a child watcher.
 *
 * Lifetime: the C side holds a reference to the object (and so to its
 * on_exit callable) from the spawn until the exit was reported, as asyncio's
 * child watchers hold the transport until the child exits.  When the loop
 * is closed first, the reference is dropped without a call; libunixloop
 * still reaps the child.
 */
#include "_core.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <structmember.h>

typedef struct {
  PyObject_HEAD
  ul_process *proc;     /* NULL once the exit was reported */
  PyObject *on_exit;    /* on_exit(pid, returncode), called once */
  long pid;
  int returncode;
  int exited;
  int pidfd;            /* after the loop closed: a dup of the child's pidfd,
                           so that kill() still reaches it (else -1) */
} ChildObj;

static void child_exited(ul_process *p, int returncode, void *arg) {
  ChildObj *c = arg;
  PyObject *cb = c->on_exit;
  c->on_exit = NULL;
  c->proc = NULL;
  if (returncode == -ECANCELED && ul_process_pidfd(p) >= 0)
    c->pidfd = fcntl(ul_process_pidfd(p), F_DUPFD_CLOEXEC, 3);
  ul_process_close(p);
  if (returncode != -ECANCELED) {  /* else: the loop was closed first */
    c->exited = 1;
    c->returncode = returncode;
    PyObject *r = PyObject_CallFunction(cb, "li", c->pid, returncode);
    if (r == NULL)
      PyErr_WriteUnraisable(cb);
    Py_XDECREF(r);
  }
  Py_XDECREF(cb);
  Py_DECREF(c);  /* the C side's reference */
}

/* Fills a NULL-terminated char* array from a sequence of bytes; the
 * pointers borrow from `seq` (a list or tuple of bytes, kept alive by the
 * caller).  Returns NULL with an exception set. */
static char **bytes_array(PyObject *seq, const char *what) {
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  char **v = PyMem_Calloc((size_t)n + 1, sizeof *v);
  if (v == NULL)
    return (char **)PyErr_NoMemory();
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
    if (!PyBytes_Check(b)) {
      PyMem_Free(v);
      PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
      return NULL;
    }
    v[i] = PyBytes_AS_STRING(b);
  }
  return v;
}

/* ChildProcess.spawn(loop, on_exit, executable, args, env, cwd, stdio,
 *                    flags, pass_fds, process_group, umask)
 * executable, args[i], env[i], cwd: bytes (checked for NUL by the caller);
 * env, cwd: None for the parent's; stdio: six ints (mode, fd) x 3 with
 * libunixloop's ul_stdio_mode values; process_group, umask, uid, gid: -1
 * for none; groups: None or a sequence of gids.  Returns (child, fd0, fd1, fd2), the
 * parent's pipe ends or -1; or, when the child could not be started,
 * (None, errno, failed_step). */
static PyObject *Child_spawn(PyObject *type, PyObject *args) {
  PyObject *loop, *on_exit, *executable, *argv_o, *env_o, *cwd_o, *pass_o;
  PyObject *groups_o;
  int modes[3], fds[3], process_group, umask_v;
  long long uid_v, gid_v;
  unsigned flags;
  if (!PyArg_ParseTuple(args, "OOSOOO(iiiiii)IOiiLLO:spawn", &loop, &on_exit,
                        &executable, &argv_o, &env_o, &cwd_o, &modes[0],
                        &fds[0], &modes[1], &fds[1], &modes[2], &fds[2],
                        &flags, &pass_o, &process_group, &umask_v, &uid_v,
                        &gid_v, &groups_o))
    return NULL;
  PyTypeObject *tp = (PyTypeObject *)type;
  core_state *st = PyType_GetModuleState(tp);
  if (st == NULL)
    return NULL;
  if (!PyObject_TypeCheck(loop, st->LoopType)) {
    PyErr_SetString(PyExc_TypeError, "loop must be a unixloop Loop");
    return NULL;
  }
  LoopObj *lo = (LoopObj *)loop;
  if (ulpy_check_closed(lo) < 0)
    return NULL;

  PyObject *argv_seq = NULL, *env_seq = NULL, *pass_seq = NULL, *result = NULL;
  PyObject *groups_seq = NULL;
  char **argv = NULL, **envp = NULL;
  int *pass = NULL;
  gid_t *groups = NULL;
  Py_ssize_t ngroups = 0;
  ChildObj *c = NULL;
  argv_seq = PySequence_Fast(argv_o, "args must be a sequence");
  if (argv_seq == NULL || (argv = bytes_array(argv_seq, "args")) == NULL)
    goto out;
  if (env_o != Py_None) {
    env_seq = PySequence_Fast(env_o, "env must be a sequence");
    if (env_seq == NULL || (envp = bytes_array(env_seq, "env")) == NULL)
      goto out;
  }
  if (cwd_o != Py_None && !PyBytes_Check(cwd_o)) {
    PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
    goto out;
  }
  pass_seq = PySequence_Fast(pass_o, "pass_fds must be a sequence");
  if (pass_seq == NULL)
    goto out;
  Py_ssize_t npass = PySequence_Fast_GET_SIZE(pass_seq);
  pass = PyMem_Calloc((size_t)npass + 1, sizeof *pass);
  if (pass == NULL) {
    PyErr_NoMemory();
    goto out;
  }
  for (Py_ssize_t i = 0; i < npass; i++) {
    pass[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(pass_seq, i));
    if (pass[i] == -1 && PyErr_Occurred())
      goto out;
  }

  if (groups_o != Py_None) {
    groups_seq = PySequence_Fast(groups_o, "groups must be a sequence");
    if (groups_seq == NULL)
      goto out;
    ngroups = PySequence_Fast_GET_SIZE(groups_seq);
    groups = PyMem_Calloc((size_t)ngroups + 1, sizeof *groups);
    if (groups == NULL) {
      PyErr_NoMemory();
      goto out;
    }
    for (Py_ssize_t i = 0; i < ngroups; i++) {
      long long g = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(groups_seq, i));
      if (g == -1 && PyErr_Occurred())
        goto out;
      groups[i] = (gid_t)g;
    }
  }

  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.file = PyBytes_AS_STRING(executable);
  o.argv = argv;
  o.envp = envp;
  o.cwd = cwd_o != Py_None ? PyBytes_AS_STRING(cwd_o) : NULL;
  for (int i = 0; i < 3; i++) {
    o.stdio[i].mode = (ul_stdio_mode)modes[i];
    o.stdio[i].fd = fds[i];
  }
  o.flags = flags;
  o.pass_fds = pass;
  o.npass_fds = (size_t)npass;
  if (process_group >= 0) {
    o.flags |= UL_SPAWN_PROCESS_GROUP;
    o.process_group = process_group;
  }
  if (umask_v >= 0) {
    o.flags |= UL_SPAWN_UMASK;
    o.umask = (mode_t)umask_v;
  }
  if (uid_v >= 0) {
    o.flags |= UL_SPAWN_SETUID;
    o.uid = (uid_t)uid_v;
  }
  if (gid_v >= 0) {
    o.flags |= UL_SPAWN_SETGID;
    o.gid = (gid_t)gid_v;
  }
  if (groups != NULL) {
    o.flags |= UL_SPAWN_SETGROUPS;
    o.groups = groups;
    o.ngroups = (size_t)ngroups;
  }

  c = PyObject_New(ChildObj, tp);
  if (c == NULL)
    goto out;
  c->proc = NULL;
  c->on_exit = Py_NewRef(on_exit);
  c->pid = -1;
  c->returncode = 0;
  c->exited = 0;
  c->pidfd = -1;

  int out_fds[3] = {-1, -1, -1}, step = 0;
  ul_process *p = NULL;
  int err = ul_process_spawn(lo->ul, &o, child_exited, c, &p, out_fds, &step);
  if (err != 0) {
    result = Py_BuildValue("(Oii)", Py_None, -err, step);
    goto out;
  }
  c->proc = p;
  c->pid = (long)ul_process_pid(p);
  Py_INCREF(c);  /* the C side's, released in child_exited */
  result = Py_BuildValue("(Oiii)", (PyObject *)c, out_fds[0], out_fds[1],
                         out_fds[2]);
  if (result == NULL) {
    for (int i = 0; i < 3; i++)
      if (out_fds[i] >= 0)
        close(out_fds[i]);
  }

out:
  Py_XDECREF(c);
  PyMem_Free(argv);
  PyMem_Free(envp);
  PyMem_Free(pass);
  PyMem_Free(groups);
  Py_XDECREF(groups_seq);
  Py_XDECREF(argv_seq);
  Py_XDECREF(env_seq);
  Py_XDECREF(pass_seq);
  return result;
}

/* send_signal(sig): ProcessLookupError once the child has exited. */
static PyObject *Child_send_signal(ChildObj *self, PyObject *arg) {
  int sig = (int)PyLong_AsLong(arg);
  if (sig == -1 && PyErr_Occurred())
    return NULL;
  int err;
  if (self->proc != NULL) {
    err = ul_process_send_signal(self->proc, sig);
  } else if (self->pidfd >= 0 && !self->exited) {
    /* The loop was closed while the child ran: its pidfd still reaches
     * it (a reaper thread takes its exit status). */
    err = syscall(SYS_pidfd_send_signal, self->pidfd, sig, NULL, 0) == 0
              ? 0
              : -errno;
  } else {
    err = -ESRCH;
  }
  if (err != 0)
    return ulpy_raise_errno(err);
  Py_RETURN_NONE;
}

static PyObject *Child_get_returncode(ChildObj *self, void *closure) {
  (void)closure;
  if (!self->exited)
    Py_RETURN_NONE;
  return PyLong_FromLong(self->returncode);
}

static void Child_dealloc(ChildObj *self) {
  PyTypeObject *tp = Py_TYPE(self);
  /* Only reached once the C side let go: proc is NULL. */
  Py_CLEAR(self->on_exit);
  if (self->pidfd >= 0)
    close(self->pidfd);
  tp->tp_free(self);
  Py_DECREF(tp);
}

static PyMethodDef Child_methods[] = {
    {"spawn", (PyCFunction)Child_spawn, METH_VARARGS | METH_CLASS, NULL},
    {"send_signal", (PyCFunction)Child_send_signal, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Child_members[] = {
    {"pid", T_LONG, offsetof(ChildObj, pid), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyGetSetDef Child_getset[] = {
    {"returncode", (getter)Child_get_returncode, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot Child_slots[] = {
    {Py_tp_dealloc, Child_dealloc},
    {Py_tp_methods, Child_methods},
    {Py_tp_members, Child_members},
    {Py_tp_getset, Child_getset},
    {0, NULL}};

static PyType_Spec Child_spec = {
    .name = "unixloop._core.ChildProcess",
    .basicsize = sizeof(ChildObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Child_slots};

int ulpy_process_exec(PyObject *mod, core_state *st) {
  st->ChildProcessType =
      (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Child_spec, NULL);
  if (st->ChildProcessType == NULL)
    return -1;
  if (PyModule_AddType(mod, st->ChildProcessType) < 0)
    return -1;
#define ADD(name, value)                                                     \
  if (PyModule_AddIntConstant(mod, name, value) < 0)                         \
    return -1;
  ADD("STDIO_INHERIT", UL_STDIO_INHERIT)
  ADD("STDIO_PIPE", UL_STDIO_PIPE)
  ADD("STDIO_DEVNULL", UL_STDIO_DEVNULL)
  ADD("STDIO_FD", UL_STDIO_FD)
  ADD("STDIO_STDOUT", UL_STDIO_STDOUT)
  ADD("SPAWN_CLOSE_FDS", UL_SPAWN_CLOSE_FDS)
  ADD("SPAWN_NEW_SESSION", UL_SPAWN_NEW_SESSION)
  ADD("SPAWN_RESTORE_SIGNALS", UL_SPAWN_RESTORE_SIGNALS)
  ADD("SPAWN_STEP_EXEC", UL_SPAWN_STEP_EXEC)
#undef ADD
  return 0;
}
