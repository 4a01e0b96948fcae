// The per-task keeper of the shepherd rung (rungs/keepers.cpp is the supervisor's side): a
// fork of the launcher (launcher.cpp) for one task, never a program of its own. Most tasks
// go to kept keepers instead (keeper_pool.cpp), which serve task after task; this one takes
// a task too big for them, and lends them start_vfork and signal_descendants.
//
// Becomes a child subreaper, starts the task in a new session, reports (STARTED,
// LEADER_EXIT, TREE_GONE; shepherd/protocol.hpp) on its status fd, obeys T/K bytes on its
// control fd. When the leader exits it kills what is left of the tree (unless linger) and
// exits once waitpid() says ECHILD: its exit means the whole tree is gone. EOF on the
// control fd (the supervisor is gone), SIGTERM (its PDEATHSIG: the launcher is gone) or
// SIGHUP: kill everything and exit.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "shepherd/protocol.hpp"
#include "shepherd/shepherd.hpp"
#include "spawn.hpp"

namespace pardo {
namespace shepherd {
namespace {

int g_status_fd = -1;
long g_parent = -1;  // the launcher
long g_leader = -1;
bool g_leader_reaped = false;
bool g_linger = false;
unsigned long long g_ignored = 0;  // the caller's ignored signals, bit s-1 for signal s

void send(const ShepherdMsg& m) {
  if (g_status_fd < 0) return;
  while (sys(SYS_write, g_status_fd, &m, sizeof m) == -EINTR) {
  }
}

[[noreturn]] void finish() {
  struct rusage ru{};
  sys(SYS_getrusage, RUSAGE_CHILDREN, &ru);
  ShepherdMsg m{MSG_TREE_GONE, 0, 0, 0, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss};
  send(m);
  leave(0);
}

// Reap every child that has exited. Returns false once there are no children left.
bool reap_all(bool* leader_just_exited) {
  while (true) {
    int st = 0;
    struct rusage ru{};
    long p = sys(SYS_wait4, -1, &st, WNOHANG, &ru);
    if (p > 0) {
      if (p == g_leader) {
        g_leader_reaped = true;
        *leader_just_exited = true;
        ShepherdMsg m{MSG_LEADER_EXIT, st, static_cast<int32_t>(p), 0, tv_us(ru.ru_utime),
                      tv_us(ru.ru_stime), ru.ru_maxrss};
        send(m);
      }
      continue;
    }
    if (p == 0) return true;
    if (p == -EINTR) continue;
    return p != -ECHILD;
  }
}

// How long a task may run before its start is announced on its own (see run_keeper).
constexpr int64_t kQuietStartMs = 2;


void signal_tree(int sig) { signal_descendants(g_leader, g_leader_reaped, sig); }

void drain(int sigfd) {
  struct signalfd_siginfo si;
  while (sys(SYS_read, sigfd, &si, sizeof si) > 0) {
  }
}

// Told to stop: if it is because our parent, the launcher, died (PDEATHSIG, or it was
// gone before we could ask for that), say so first, so that the supervisor can report
// why the task was killed rather than let it pass for a signal from elsewhere.
void say_if_orphaned() {
  if (sys(SYS_getppid) == g_parent) return;
  ShepherdMsg m{MSG_ORPHANED, 0, 0, 0, 0, 0, 0};
  send(m);
}

// SIGKILL everything below us until nothing is left. Orphans of killed processes are
// re-parented to us (we are a subreaper), so each round finds what the last one missed.
[[noreturn]] void kill_everything(int sigfd) {
  while (true) {
    signal_tree(SIGKILL);
    bool dummy = false;
    if (!reap_all(&dummy)) finish();
    struct pollfd p{sigfd, POLLIN, 0};
    wait_fds(&p, 1, 10);
    drain(sigfd);
  }
}

// The leader, in the forked child: a session of its own, our stdio, then the program.
// A failure goes back through err_fd as (stage, errno).
[[noreturn]] void leader_main(char** execs, char** args, char** envp, int err_fd) {
  auto fail = [err_fd](int stage, long err) {
    int32_t ce[2] = {stage, static_cast<int32_t>(err)};
    while (sys(SYS_write, err_fd, ce, sizeof ce) == -EINTR) {
    }
    leave(127);
  };
  set_disposition(SIGPIPE, reinterpret_cast<void*>(SIG_DFL));  // we ignore it; programs expect it
  // What the caller ignores stays ignored, as across an exec of its own child (`nohup`);
  // every other disposition is the default already (the launcher reset them).
  for (int s = 1; s <= 64; ++s)
    if (g_ignored & (1ULL << (s - 1))) set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  unsigned long none = 0;
  sys(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
  long r = sys(SYS_setsid);
  if (r < 0) fail(STAGE_SESSION, -r);
  sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  // Pass on stdio and whatever else the supervisor placed below our own fds.
  int top = 2;
  for (int fd = 0; fd < g_status_fd; ++fd) {
    if (sys(SYS_fcntl, fd, F_GETFD) < 0) continue;
    r = sys(SYS_fcntl, fd, F_SETFD, 0);
    if (r < 0) fail(STAGE_FDS, -r);
    top = fd > top ? fd : top;
  }
  // A task never sees an fd it was not given; failing that it does not run.
  r = cloexec_from(top + 1, err_fd);
  if (r < 0) fail(STAGE_FDS, -r);
  long err = exec_search(execs, args, envp);
  fail(STAGE_EXEC, err);
  leave(127);
}

struct LeaderArgs {
  char** execs;
  char** args;
  char** envp;
  int err_fd;
};

int leader_entry(void* p) {
  auto* a = static_cast<LeaderArgs*>(p);
  leader_main(a->execs, a->args, a->envp, a->err_fd);
}

long start_leader(LeaderArgs* a) { return start_vfork(leader_entry, a); }

// Where permitted, wait and kill ahead of busy tasks, as the supervisor thread does,
// never passed on to children; PARDO_NO_REALTIME=1 in the environment rules out real time.
void raise_own_priority(char** envp) {
  bool realtime = true;
  for (char** e = envp; *e; ++e)
    if (after(*e, "PARDO_NO_REALTIME=")) realtime = false;
  raise_priority(realtime);
}

}  // namespace

// The leader starts vfork-style where it can: it runs on a stack of its own inside our
// address space until its exec, so nothing is copied for it (no page tables, no
// copy-on-write faults, no address space to tear down at its exec); we sleep meanwhile.
// It changes nothing of ours that we read afterwards: its fd table, signal dispositions
// and mask are its own copies (no CLONE_FILES, no CLONE_SIGHAND).
#if defined(__x86_64__) || defined(__aarch64__)
extern "C" long pardo_clone3_run(void* args, unsigned long size, int (*fn)(void*), void* arg);
extern "C" long pardo_clone_run(unsigned long flags, void* stack_top, int (*fn)(void*), void* arg,
                                int* child_tid);
constexpr bool kVforkStart = true;
#else
constexpr bool kVforkStart = false;
#endif
constexpr unsigned long kLeaderStackSize = 64 * 1024;
alignas(64) char g_leader_stack[kLeaderStackSize];
bool g_clone3_refused = false;  // a kept keeper starts many tasks: ask once
bool g_clone_vm_refused = false;  // and clone() with CLONE_VM | CLONE_VFORK too

// Start fn(arg) in a child vfork-style (CLONE_VM | CLONE_VFORK) with clone3, or where it is
// refused (ENOSYS before Linux 5.3 or under Docker's seccomp profile, EPERM under others)
// with clone: its pid, -ENOSYS where neither may be used so, or another -errno.
long clone_vfork(int (*fn)(void*), void* arg) {
  if (!kVforkStart) return -ENOSYS;
#if defined(__x86_64__) || defined(__aarch64__)
  if (g_clone3_refused) {
    if (g_clone_vm_refused) return -ENOSYS;
    long pid = pardo_clone_run(CLONE_VM | CLONE_VFORK | SIGCHLD, g_leader_stack + kLeaderStackSize, fn,
                               arg, nullptr);
    if (pid > 0 || (pid != -ENOSYS && pid != -EPERM && pid != -EINVAL)) return pid;
    g_clone_vm_refused = true;
    return -ENOSYS;
  }
  struct {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
  } ca{};
  ca.flags = CLONE_VM | CLONE_VFORK;
  ca.exit_signal = SIGCHLD;
  ca.stack = reinterpret_cast<uint64_t>(g_leader_stack);
  ca.stack_size = kLeaderStackSize;
  long pid = pardo_clone3_run(&ca, sizeof ca, fn, arg);
  if (pid > 0 || (pid != -ENOSYS && pid != -EPERM && pid != -EINVAL)) return pid;
  g_clone3_refused = true;
  return clone_vfork(fn, arg);
#endif
  (void)fn;
  (void)arg;
  return -ENOSYS;
}

// The same, else a plain fork (clone), which copies our few pages.
long start_vfork(int (*fn)(void*), void* arg) {
  long pid = clone_vfork(fn, arg);
  if (pid != -ENOSYS) return pid;
  pid = sys(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) leave(fn(arg));
  return pid;
}

int apply_task_settings(const LaunchRequest& h, const char* cwd, int current_nice, long* err) {
  long r = 0;
  int stage = 0;
  if ((h.flags & LAUNCH_CWD) && (r = sys(SYS_chdir, cwd)) < 0) {
    stage = STAGE_CHDIR;
  } else if ((h.flags & LAUNCH_CPUS) && (r = sys(SYS_sched_setaffinity, 0, sizeof h.cpus, h.cpus)) < 0) {
    stage = STAGE_AFFINITY;
  } else if ((h.flags & LAUNCH_NICE) && (r = sys(SYS_setpriority, PRIO_PROCESS, 0, h.nice)) < 0) {
    stage = STAGE_NICE;
  } else {
    if (!(h.flags & LAUNCH_NICE) && h.base_nice != current_nice)
      sys(SYS_setpriority, PRIO_PROCESS, 0, h.base_nice);
    struct {
      uint64_t cur, max;
    } rl;
    if (h.flags & LAUNCH_RESTORE_NOFILE) {
      rl = {h.nofile_cur, h.nofile_max};
      sys(SYS_prlimit64, 0, RLIMIT_NOFILE, &rl, nullptr);
    }
    if (h.rlimit_as > 0) {
      rl.cur = rl.max = static_cast<uint64_t>(h.rlimit_as);
      if ((r = sys(SYS_prlimit64, 0, RLIMIT_AS, &rl, nullptr)) < 0) stage = STAGE_RLIMIT;
    }
  }
  *err = stage ? -r : 0;
  return stage;
}

// Our descendants (find_descendants, raw/rawproc.hpp), in fixed lists: at most 32768 a
// round, as the kill loop repeats until none is left and orphans of killed processes come
// to us; the parent links of up to 65536 processes where the kernel has no children files.
FixedList<long, 32768> g_pids;
FixedList<PidLink, 65536> g_links;

void signal_descendants(long leader, bool leader_reaped, int sig) {
  // The leader's group first (cheap, catches most of a tree at once) while the leader is
  // unreaped and so pins the group id; then every descendant found in /proc, which
  // catches setsid/setpgid escapees that still descend from us.
  bool group_sent = false;
  if (!leader_reaped && leader > 1) {
    group_sent = sys(SYS_kill, -leader, sig) == 0;
    if (sig == SIGTERM) sys(SYS_kill, -leader, SIGCONT);
  }
  find_descendants(sys(SYS_getpid), g_pids, g_links);
  for (int i = 0; i < g_pids.size(); ++i) {
    long p = g_pids[i];
    // A signal that can be caught goes once to each process: a shell's trap run twice
    // would do its cleanup twice. SIGKILL may be repeated; it closes the race with a fork.
    if (sig != SIGKILL && group_sent && sys(SYS_getpgid, p) == leader) continue;
    sys(SYS_kill, p, sig);
    if (sig == SIGTERM) sys(SYS_kill, p, SIGCONT);  // a stopped process cannot act on TERM
    // A process with SIGKILL pending can only die; where we may, let it do so before the
    // busy processes of a saturated machine (it cannot run its own code again). The same,
    // more gently, for one that SIGTERM will end.
    if (sig == SIGKILL || sig == SIGTERM) hasten_dying(p, sig);
  }
}

[[noreturn]] void run_keeper(const KeeperArgs& k) {
  g_status_fd = k.status_fd;
  g_parent = k.parent;
  g_linger = k.linger;
  g_ignored = k.ignored;
  int ctl_fd = k.ctl_fd;
  char** execs = k.execs;
  char** args = k.args;
  char** envp = k.envp;
  // Unchecked: on fds we were given these calls cannot fail, and the leader marks every fd
  // above its stdio close-on-exec anyway.
  sys(SYS_fcntl, g_status_fd, F_SETFD, FD_CLOEXEC);
  sys(SYS_fcntl, ctl_fd, F_SETFD, FD_CLOEXEC);
  set_disposition(SIGPIPE, reinterpret_cast<void*>(SIG_IGN));  // a vanished supervisor must not kill us before we clean up
  // Without these two the keeper cannot keep its word (orphans of the tree would escape
  // it; a leader's exit would go unseen): it refuses to start the task, and the engine
  // reports a helper that could not run.
  long r = sys(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);
  unsigned long mask = 0;
  for (int s : {SIGCHLD, SIGTERM, SIGHUP, SIGINT, SIGQUIT}) mask |= 1UL << (s - 1);
  sys(SYS_rt_sigprocmask, SIG_BLOCK, &mask, nullptr, sizeof mask);
  // Our parent may have died before we could ask for its death signal: then the
  // supervisor is told so by the launcher's end, and the task is not started.
  if (r == 0) r = sys(SYS_prctl, PR_SET_PDEATHSIG, SIGTERM);
  if (r == 0 && sys(SYS_getppid) != g_parent) r = -ECHILD;
  if (r == 0) r = sys(SYS_signalfd4, -1, &mask, sizeof mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (r < 0) {
    ShepherdMsg m{MSG_EXEC_FAILED, STAGE_HELPER, static_cast<int32_t>(-r), 0, 0, 0, 0};
    send(m);
    leave(1);
  }
  int sigfd = static_cast<int>(r);

  // The leader (start_leader) reports a failed exec through a close-on-exec pipe, which
  // reads EOF once the exec has succeeded.
  int ep[2];
  r = sys(SYS_pipe2, ep, O_CLOEXEC);
  LeaderArgs la{execs, args, envp, r == 0 ? ep[1] : -1};
  long pid = r == 0 ? start_leader(&la) : r;
  if (r == 0) sys(SYS_close, ep[1]);
  if (pid < 0) {
    ShepherdMsg m{MSG_EXEC_FAILED, STAGE_CLONE, static_cast<int32_t>(-pid), 0, 0, 0, 0};
    send(m);
    finish();
  }
  int32_t ce[2] = {0, 0};
  long n;
  while ((n = sys(SYS_read, ep[0], ce, sizeof ce)) == -EINTR) {
  }
  sys(SYS_close, ep[0]);
  if (n == static_cast<long>(sizeof ce)) {
    int st;
    while (sys(SYS_wait4, pid, &st, 0, nullptr) == -EINTR) {
    }
    ShepherdMsg m{MSG_EXEC_FAILED, ce[0], ce[1], 0, 0, 0, 0};
    send(m);
    finish();
  }
  g_leader = pid;
  // The task was started first, so it inherits none of this.
  raise_own_priority(envp);
  const int64_t started_ms = mono_ms();
  // Our stdio belongs to the task; hold none of it, so the task's pipes reach EOF as soon
  // as the task's own processes are gone.
  // Without /dev/null (no fds left, a sandbox without it) they are closed instead.
  long devnull = sys(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR);
  for (int fd = 0; fd < g_status_fd; ++fd) {
    if (fd == devnull) continue;
    if (devnull >= 0)
      sys(SYS_dup3, devnull, fd, 0);
    else
      sys(SYS_close, fd);
  }
  if (devnull >= g_status_fd) sys(SYS_close, devnull);

  // A task that ends within a moment of its start is announced by its exit alone
  // (LEADER_EXIT carries its pid), which spares the supervisor a wake-up per short task;
  // a longer one is announced when that moment has passed.
  bool announced = false;
  struct pollfd pfd[2] = {{sigfd, POLLIN, 0}, {ctl_fd, POLLIN, 0}};
  while (true) {
    int timeout = -1;
    if (!announced) {
      int64_t left = started_ms + kQuietStartMs - mono_ms();
      if (left <= 0 || g_leader_reaped) {
        if (!g_leader_reaped) {
          ShepherdMsg started{MSG_STARTED, static_cast<int32_t>(pid),
                              static_cast<int32_t>(sys(SYS_getpid)), 0, 0, 0, 0};
          send(started);
        }
        announced = true;
      } else {
        timeout = static_cast<int>(left);
      }
    }
    long k = wait_fds(pfd, 2, timeout);
    if (k < 0 && k != -EINTR) {
      say_if_orphaned();
      kill_everything(sigfd);
    }
    if (k <= 0) continue;
    if (pfd[0].revents) {
      struct signalfd_siginfo si;
      bool stop = false;
      while (sys(SYS_read, sigfd, &si, sizeof si) == static_cast<long>(sizeof si)) {
        if (si.ssi_signo != SIGCHLD) stop = true;
      }
      if (stop) {
        say_if_orphaned();
        kill_everything(sigfd);
      }
      bool leader_exited = false;
      bool any_left = reap_all(&leader_exited);
      if (!any_left && g_leader_reaped) finish();  // the common case: nothing left to kill
      if (leader_exited && !g_linger) kill_everything(sigfd);
    }
    if (pfd[1].revents) {
      char c;
      long got = sys(SYS_read, ctl_fd, &c, 1);
      if (got == 0 || (got < 0 && got != -EINTR && got != -EAGAIN)) {
        say_if_orphaned();
        kill_everything(sigfd);
      }
      if (got == 1 && c == CTL_KILL) kill_everything(sigfd);
      if (got == 1 && c == CTL_TERM) signal_tree(SIGTERM);
    }
  }
}

}  // namespace shepherd
}  // namespace pardo
