// Kept keepers: the shepherd rung's keepers that serve task after task (rungs/keepers.cpp,
// kept_keepers.cpp is the supervisor's side; the wire format is in shepherd/protocol.hpp).
//
//   supervisor ──kKeeperMagic + socket──► launcher ──fork──► kept keeper
//        │                                                   │  ▲
//        ├── task: LaunchRequest + strings + fds ───────────►│  │ T/K bytes
//        ◄── STARTED?, LEADER_EXIT?, DONE / TREE_GONE ───────┘  │
//        └──────────────────────── (one SOCK_SEQPACKET socket) ─┘
//                                                            │ vfork-style, per task
//                                                            ▼
//                                                  task: fds, cwd, cpus, nice, rlimits,
//                                                  a session of its own, exec
//
// A per-task keeper (keeper.cpp) costs the launcher a request, a fork and an exit per task;
// a kept keeper costs one message in and one out. It keeps every promise the per-task
// keeper makes -- it is a subreaper, the task leads a new session, PDEATHSIG ties the
// keeper to the launcher and the leader to the keeper, EOF on the socket (the supervisor
// is gone) or a signal kills the whole tree until wait4 says ECHILD -- and it is reused
// only when nothing of the last task can be left in it:
//
// - a task is done when its leader is reaped and no child is left (ECHILD): only then is
//   the keeper idle again;
// - a keeper that signalled a tree (T, K, a leader's exit that left processes to kill), or
//   reaped any process but the leader (orphans reparented to it, a lingering tree),
//   retires: it says so in its last message and exits. Its memory then holds what the
//   tree walk touched, which would count in the max_rss of the tasks it started next
//   (a leader started vfork-style carries the keeper's high-water mark into its own).
//
// The task's settings are applied by the task's child between clone and exec (the keeper
// stays as it was): the child runs in the keeper's memory until its exec, so it only makes
// raw system calls on its own fd table, and reports a failure as (stage, errno) on a pipe.
// max_rss and CPU time are summed from the wait4 rusage of each process this task's tree
// left to the keeper: the keeper's own RUSAGE_CHILDREN spans every task it ever ran.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "raw/rawmsg.hpp"
#include "shepherd/protocol.hpp"
#include "shepherd/shepherd.hpp"
#include "spawn.hpp"

namespace pardo {
namespace shepherd {
namespace {

constexpr int kSockFd = 3;  // the kept keeper's socket, just above its /dev/null stdio

// How long a task may run before its start is announced on its own (as keeper.cpp does):
// a task that ends sooner is announced by its end alone, a message fewer per short task.
constexpr int64_t kQuietStartMs = 2;

// The task being served: its message (header, then strings), the pointers into them, its
// fds. Static: the keeper allocates nothing.
alignas(16) char g_msg[kKeptMaxMessage];
char* g_ptrs[kKeptMaxMessage + 3];
int g_fds[kLaunchMaxFds];
int g_nfds = 0;
int g_child_nice = 0;  // the nice a child of ours starts with (SCHED_RESET_ON_FORK: >= 0)
bool g_may_realtime = false;  // real time is ours to take when a tree is to be signalled

// Take real time (where the launcher has it: permitted, and not ruled out) for what must
// not wait behind busy tasks: signalling and killing a tree. A keeper that does so
// retires, so no keeper serves tasks in real time: with the supervisor and the keepers
// all real time on few CPUs, the scheduler moved them between CPUs at nearly every task
// (0.7 migrations a task against 0.04 for the cgroup rung), which cost 8-9% of the
// launch rate.
void hasten_self() {
  if (g_may_realtime) set_realtime(true);
  g_may_realtime = false;
}

// What the child is given, in the keeper's memory. A child started vfork-style reports a
// failure before its exec right here (the keeper sleeps until the child has exec'd or
// exited); one forked, through err_fd (a close-on-exec pipe that reads EOF once the exec
// has succeeded).
struct Child {
  const LaunchRequest* h;
  char** execs;
  char** args;
  char** envp;
  const char* cwd;
  int err_fd;  // -1: report in fail_stage, fail_err
  int child_nice;  // what the child's nice is before it sets its own
  volatile int32_t fail_stage, fail_err;
};

void send(const ShepherdMsg& m) {
  while (sys(SYS_sendto, kSockFd, &m, sizeof m, MSG_NOSIGNAL, nullptr, 0) == -EINTR) {
  }
}

// The task's child, in the keeper's memory until its exec: fds in place, the task's
// settings, a session of its own, then the program. Raw system calls on its own fd table,
// signal dispositions and mask only (no CLONE_FILES, no CLONE_SIGHAND).
[[noreturn]] void child_fail(Child& c, int err_fd, int stage, long err) {
  if (err_fd < 0) {
    c.fail_err = static_cast<int32_t>(err);
    c.fail_stage = stage;
  } else {
    int32_t ce[2] = {stage, static_cast<int32_t>(err)};
    while (sys(SYS_write, err_fd, ce, sizeof ce) == -EINTR) {
    }
  }
  leave(127);
}

bool is_target(const LaunchRequest& h, int fd) {
  for (int i = 0; i < h.nfds; ++i)
    if (h.targets[i] == fd) return true;
  return false;
}

int child_main(void* p) {
  Child& c = *static_cast<Child*>(p);
  const LaunchRequest& h = *c.h;
  int top = 2;
  for (int i = 0; i < h.nfds; ++i) top = h.targets[i] > top ? h.targets[i] : top;
  // The task gets exactly its fds at their places, up to top; everything above is closed
  // at the exec. What stands in the way of those places moves above top first.
  int err_fd = c.err_fd;
  if (err_fd >= 0 && err_fd <= top) {
    long e = sys(SYS_fcntl, err_fd, F_DUPFD_CLOEXEC, top + 1);
    if (e < 0) child_fail(c, err_fd, STAGE_FDS, -e);
    err_fd = static_cast<int>(e);
  }
  int src[kLaunchMaxFds];
  for (int i = 0; i < h.nfds; ++i) {
    src[i] = g_fds[i];
    if (src[i] > top) continue;
    long d = sys(SYS_fcntl, src[i], F_DUPFD_CLOEXEC, top + 1);
    if (d < 0) child_fail(c, err_fd, STAGE_FDS, -d);
    src[i] = static_cast<int>(d);
  }
  for (int fd = 0; fd <= top; ++fd)
    if (!is_target(h, fd)) sys(SYS_close, fd);
  for (int i = 0; i < h.nfds; ++i) {
    long r = sys(SYS_dup3, src[i], h.targets[i], 0);
    if (r < 0) child_fail(c, err_fd, STAGE_FDS, -r);
  }
  long r = cloexec_from(top + 1, err_fd);
  if (r < 0) child_fail(c, err_fd, STAGE_FDS, -r);

  long err;
  if (int stage = apply_task_settings(h, c.cwd, c.child_nice, &err)) child_fail(c, err_fd, stage, err);
  // Dispositions as the caller's child would have them: every one at its default in the
  // keeper, the caller's ignored signals ignored; no signal blocked.
  for (int s = 1; s <= 64; ++s)
    if (h.ignored & (1ULL << (s - 1))) set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  unsigned long none = 0;
  sys(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
  r = sys(SYS_setsid);
  if (r < 0) child_fail(c, err_fd, STAGE_SESSION, -r);
  sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  child_fail(c, err_fd, STAGE_EXEC, exec_search(c.execs, c.args, c.envp));
}

// One task's tree, as the keeper sees it.
struct Tree {
  long leader = -1;
  bool leader_reaped = false;
  bool leader_reported = false;  // LEADER_EXIT sent
  bool retire = false;           // signalled, or reaped more than the leader
  int leader_status = 0;
  int64_t leader_utime = 0, leader_stime = 0, leader_maxrss = 0;
  int64_t utime = 0, stime = 0, maxrss = 0;  // every process of the tree reaped so far
};

// Reap every child that has exited into t. False once no child is left.
bool reap(Tree& t) {
  while (true) {
    int st = 0;
    struct rusage ru{};
    long p = sys(SYS_wait4, -1, &st, WNOHANG, &ru);
    if (p == -EINTR) continue;
    if (p == 0) return true;
    if (p < 0) return p != -ECHILD;
    t.utime += tv_us(ru.ru_utime);
    t.stime += tv_us(ru.ru_stime);
    if (ru.ru_maxrss > t.maxrss) t.maxrss = ru.ru_maxrss;
    if (p == t.leader) {
      t.leader_reaped = true;
      t.leader_status = st;
      t.leader_utime = tv_us(ru.ru_utime);
      t.leader_stime = tv_us(ru.ru_stime);
      t.leader_maxrss = ru.ru_maxrss;
    } else {
      t.retire = true;  // an orphan of the tree came to us
    }
  }
}

// The tree is gone: the task's last message; then exit, or wait for the next task.
void tree_done(const Tree& t) {
  int32_t retiring = t.retire ? kKeptRetiring : 0;
  if (t.leader_reported) {
    ShepherdMsg m{MSG_TREE_GONE, 0, 0, retiring, t.utime, t.stime, t.maxrss};
    send(m);
  } else {
    ShepherdMsg m{MSG_DONE, t.leader_status, static_cast<int32_t>(t.leader), retiring,
                  t.utime, t.stime, t.maxrss};
    send(m);
  }
  if (t.retire) leave(0);
}

void report_leader(Tree& t) {
  if (t.leader_reported) return;
  t.leader_reported = true;
  ShepherdMsg m{MSG_LEADER_EXIT, t.leader_status, static_cast<int32_t>(t.leader), 0,
                t.leader_utime, t.leader_stime, t.leader_maxrss};
  send(m);
}

void drain(int sigfd) {
  struct signalfd_siginfo si;
  while (sys(SYS_read, sigfd, &si, sizeof si) > 0) {
  }
}

// SIGKILL the whole tree until nothing is left (orphans of killed processes come to us,
// a subreaper, so each round finds what the last one missed); then the last message, and
// exit.
[[noreturn]] void kill_tree(Tree& t, int sigfd) {
  t.retire = true;
  hasten_self();
  while (true) {
    signal_descendants(t.leader, t.leader_reaped, SIGKILL);
    bool left = reap(t);
    if (t.leader_reaped && left) report_leader(t);
    if (!left) {
      tree_done(t);
      leave(0);
    }
    struct pollfd p{sigfd, POLLIN, 0};
    wait_fds(&p, 1, 10);
    drain(sigfd);
  }
}

// Told to stop while a task runs: if our parent, the launcher, is gone, say so first, so
// that the supervisor reports why the task was killed.
[[noreturn]] void orphaned_kill(Tree& t, int sigfd, long launcher) {
  if (sys(SYS_getppid) != launcher) {
    ShepherdMsg m{MSG_ORPHANED, 0, 0, 0, 0, 0, 0};
    send(m);
  }
  kill_tree(t, sigfd);
}

// Receive one message into g_msg (a task's fds into g_fds). Its length, 0 at EOF, or -errno.
long receive() {
  alignas(struct cmsghdr) char cbuf[fds_space(kLaunchMaxFds)];
  struct iovec iov{g_msg, sizeof g_msg};
  struct msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  long n;
  while ((n = sys(SYS_recvmsg, kSockFd, &mh, MSG_CMSG_CLOEXEC)) == -EINTR) {
  }
  g_nfds = 0;
  if (n < 0) return n;
  const int* p;
  for (int i = 0, k = received_fds(&mh, &p); i < k && i < kLaunchMaxFds; ++i) g_fds[g_nfds++] = p[i];
  if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return -EPROTO;
  return n;
}

void close_task_fds() {
  // They usually arrive as one run of numbers (stdin, stdout, stderr): one call for all.
  int lo = 1 << 30, hi = -1;
  for (int i = 0; i < g_nfds; ++i) {
    lo = g_fds[i] < lo ? g_fds[i] : lo;
    hi = g_fds[i] > hi ? g_fds[i] : hi;
  }
  if (g_nfds < 2 || hi - lo + 1 != g_nfds || sys(SYS_close_range, lo, hi, 0) != 0)
    for (int i = 0; i < g_nfds; ++i) sys(SYS_close, g_fds[i]);
  g_nfds = 0;
}

// Serve one task, received in g_msg (n bytes). Returns when its tree is gone and the
// keeper may take the next; exits when it retires.
void serve(long n, int sigfd, long launcher) {
  Tree t;
  const auto& h = *reinterpret_cast<const LaunchRequest*>(g_msg);
  char **execs, **args, **envp, *cwd;
  if (n < static_cast<long>(sizeof h) || h.magic != kLaunchMagic ||
      h.size != static_cast<uint64_t>(n) - sizeof h || h.nfds != g_nfds || h.nexec < 0 ||
      h.nargv < 0 || h.nenv < 0 ||
      static_cast<uint64_t>(h.nexec) + h.nargv + h.nenv + 3 > sizeof g_ptrs / sizeof *g_ptrs ||
      !split_request(h, g_msg + sizeof h, g_ptrs, &execs, &args, &envp, &cwd)) {
    // Out of step with the supervisor: this keeper cannot be trusted with another task.
    close_task_fds();
    ShepherdMsg m{MSG_EXEC_FAILED, STAGE_HELPER, EPROTO, 0, 0, 0, 0};
    send(m);
    t.leader_reported = true;
    t.retire = true;
    tree_done(t);
  }
  // Vfork-style, the child reports a failure in c (we sleep until it has exec'd or
  // exited); forked, where clone3 is refused, through a pipe.
  Child c{&h, execs, args, envp, cwd, -1, g_child_nice, 0, 0};
  long pid = clone_vfork(child_main, &c);
  int ep[2] = {-1, -1};
  if (pid == -ENOSYS) {
    pid = sys(SYS_pipe2, ep, O_CLOEXEC);
    if (pid == 0) {
      c.err_fd = ep[1];
      pid = sys(SYS_clone, SIGCHLD, 0, 0, 0, 0);
      if (pid == 0) leave(child_main(&c));
      sys(SYS_close, ep[1]);
      if (pid > 0) {
        int32_t ce[2] = {0, 0};
        long got;
        while ((got = sys(SYS_read, ep[0], ce, sizeof ce)) == -EINTR) {
        }
        if (got == static_cast<long>(sizeof ce)) {
          c.fail_stage = ce[0];
          c.fail_err = ce[1];
        }
      }
      sys(SYS_close, ep[0]);
    }
  }
  close_task_fds();
  if (pid < 0) {
    ShepherdMsg m{MSG_EXEC_FAILED, STAGE_CLONE, static_cast<int32_t>(-pid), 0, 0, 0, 0};
    send(m);
    t.leader_reported = true;  // nothing ran: the end is a bare TREE_GONE
    tree_done(t);
    return;
  }
  t.leader = pid;
  if (c.fail_stage != 0) {
    // It never ran the task: reap it (its rusage is not the task's), report, go on.
    int st;
    while (sys(SYS_wait4, pid, &st, 0, nullptr) == -EINTR) {
    }
    ShepherdMsg m{MSG_EXEC_FAILED, c.fail_stage, c.fail_err, 0, 0, 0, 0};
    send(m);
    t.leader_reported = true;
    tree_done(t);
    return;
  }

  // A task that ends within kQuietStartMs is announced by its end alone (LEADER_EXIT or
  // DONE carry its pid); a longer one when the first wait ends otherwise: it times out
  // (no clock is read per task), or something else than the leader's end woke us.
  bool announced = false;
  auto announce = [&] {
    if (!announced && !t.leader_reaped) {
      ShepherdMsg m{MSG_STARTED, static_cast<int32_t>(pid), static_cast<int32_t>(sys(SYS_getpid)),
                    0, 0, 0, 0};
      send(m);
    }
    announced = true;
  };
  struct pollfd pfd[2] = {{sigfd, POLLIN, 0}, {kSockFd, POLLIN, 0}};
  while (true) {
    long k = wait_fds(pfd, 2, announced ? -1 : static_cast<int>(kQuietStartMs));
    if (k == -EINTR) continue;
    if (k < 0) orphaned_kill(t, sigfd, launcher);
    if (k == 0) {
      announce();
      continue;
    }
    if (pfd[0].revents) {
      // One read takes every pending signal (SIGCHLD is one however many children
      // exited; reap() finds them all).
      struct signalfd_siginfo si[4];
      bool stop = false;
      long got = sys(SYS_read, sigfd, si, sizeof si);
      for (long i = 0; got > 0 && i < got / static_cast<long>(sizeof si[0]); ++i)
        if (si[i].ssi_signo != SIGCHLD) stop = true;
      if (stop) orphaned_kill(t, sigfd, launcher);
      bool left = reap(t);
      if (t.leader_reaped && !left) {  // the common case: nothing left to kill
        tree_done(t);
        return;
      }
      if (t.leader_reaped) {
        report_leader(t);
        if (!(h.flags & LAUNCH_LINGER)) kill_tree(t, sigfd);
        t.retire = true;  // a lingering tree: its processes will come to us
      }
    }
    announce();
    if (pfd[1].revents) {
      char c1;
      long got1;
      while ((got1 = sys(SYS_recvfrom, kSockFd, &c1, 1, MSG_DONTWAIT, nullptr, nullptr)) == -EINTR) {
      }
      if (got1 == -EAGAIN) continue;
      // EOF (the supervisor is gone), or anything but a control byte while a task runs
      // (a task for a busy keeper, a longer message): kill everything and exit.
      if (got1 != 1 || (c1 != CTL_KILL && c1 != CTL_TERM)) orphaned_kill(t, sigfd, launcher);
      if (c1 == CTL_KILL) kill_tree(t, sigfd);
      t.retire = true;
      hasten_self();
      signal_descendants(t.leader, t.leader_reaped, SIGTERM);
    }
  }
}

}  // namespace

bool serve_keeper_request(const int* fds, int n, long launcher) {
  if (n != 1) {
    for (int i = 0; i < n; ++i) sys(SYS_close, fds[i]);
    return n > 0;  // a request without its socket cannot come from the supervisor
  }
  long pid = sys(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) run_kept_keeper(fds[0], launcher);
  if (pid < 0) {
    // The supervisor's task already waits on this socket: tell it why nothing will run.
    ShepherdMsg m{MSG_EXEC_FAILED, STAGE_CLONE, static_cast<int32_t>(-pid), kKeptRetiring, 0, 0, 0};
    sys(SYS_sendto, fds[0], &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT, nullptr, 0);
  }
  sys(SYS_close, fds[0]);
  return true;
}

[[noreturn]] void run_kept_keeper(int sock, long launcher) {
  // Only our socket, as fd 3, above /dev/null as stdio (the launcher's stdout and stderr);
  // nothing else of the launcher's (its socket, its signalfd, other tasks' pipes).
  if (sock != kSockFd) {
    if (sys(SYS_dup3, sock, kSockFd, O_CLOEXEC) < 0) leave(1);
  } else {
    sys(SYS_fcntl, kSockFd, F_SETFD, FD_CLOEXEC);
  }
  sys(SYS_close, 0);
  sys(SYS_dup3, 1, 0, 0);
  if (close_from(kSockFd + 1) < 0) leave(1);
  // Every disposition at its default, as the tasks start with theirs: the launcher left
  // them so but SIGPIPE, which we need not ignore (we send with MSG_NOSIGNAL).
  set_disposition(SIGPIPE, reinterpret_cast<void*>(SIG_DFL));
  long r = sys(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);
  unsigned long mask = 0;
  for (int s : {SIGCHLD, SIGTERM, SIGHUP, SIGINT, SIGQUIT}) mask |= 1UL << (s - 1);
  sys(SYS_rt_sigprocmask, SIG_BLOCK, &mask, nullptr, sizeof mask);
  // The launcher may have died before we could ask for its death signal: then our
  // socket's end tells the supervisor, at its first task.
  if (r == 0) r = sys(SYS_prctl, PR_SET_PDEATHSIG, SIGTERM);
  if (r == 0 && sys(SYS_getppid) != launcher) r = -ECHILD;
  if (r == 0) r = sys(SYS_signalfd4, -1, &mask, sizeof mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (r < 0) {
    ShepherdMsg m{MSG_EXEC_FAILED, STAGE_HELPER, static_cast<int32_t>(-r), kKeptRetiring, 0, 0, 0};
    send(m);
    leave(1);
  }
  const int sigfd = static_cast<int>(r);
  // Waiting ahead of busy tasks where permitted (nice -10), never passed on to the tasks
  // (SCHED_RESET_ON_FORK); real time only to signal a tree (hasten_self), if the launcher
  // has it (its environment may rule real time out: PARDO_NO_REALTIME).
  long policy = sys(SYS_sched_getscheduler, launcher);
  g_may_realtime = policy >= 0 && (policy & ~SCHED_RESET_ON_FORK) == SCHED_FIFO;
  raise_priority(false);
  long prio = sys(SYS_getpriority, PRIO_PROCESS, 0);  // the raw call returns 20 - nice
  int own = prio < 0 ? 0 : static_cast<int>(20 - prio);
  // Reset on fork gives a child of a raised keeper nice 0; without it, ours. Unknown:
  // an impossible value, so that the child always sets its own.
  long pol = sys(SYS_sched_getscheduler, 0);
  if (prio < 0 || pol < 0)
    g_child_nice = kNiceUnknown;
  else
    g_child_nice = (pol & SCHED_RESET_ON_FORK) && own < 0 ? 0 : own;

  struct pollfd pfd[2] = {{sigfd, POLLIN, 0}, {kSockFd, POLLIN, 0}};
  while (true) {
    long k = wait_fds(pfd, 2, -1);
    if (k == -EINTR || k == 0) continue;
    if (k < 0) leave(1);
    if (pfd[0].revents) {
      struct signalfd_siginfo si;
      bool stop = false;
      while (sys(SYS_read, sigfd, &si, sizeof si) == static_cast<long>(sizeof si))
        if (si.ssi_signo != SIGCHLD) stop = true;
      if (stop) leave(0);  // idle: no tree to kill
    }
    if (!pfd[1].revents) continue;
    long n = receive();
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n <= 0 && n != -EPROTO) leave(0);  // the supervisor is gone, or the socket is
    if (n == 1) continue;  // a T or K for a task that ended meanwhile
    serve(n, sigfd, launcher);
  }
}

}  // namespace shepherd
}  // namespace pardo
