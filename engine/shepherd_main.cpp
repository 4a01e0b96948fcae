// pardo-shepherd: the per-task keeper of the shepherd rung, and the cgroup rung's guardian.
//
//   pardo-shepherd --task --status-fd=N --ctl-fd=M [--linger] --exec=PATH... -- ARGV...
//     Becomes a child subreaper, starts ARGV in a new session, reports (STARTED,
//     LEADER_EXIT, TREE_GONE) on fd N, obeys T/K bytes on fd M. When the leader exits it
//     kills what is left of the tree (unless --linger) and exits once waitpid() says ECHILD:
//     its exit means the whole tree is gone. EOF on fd M, SIGTERM or SIGHUP (its
//     PDEATHSIG) mean the supervisor is gone: kill everything and exit.
//   pardo-shepherd --guardian=CGROUP_DIR
//     Waits for EOF on stdin (the supervisor process died or shut down), then kills every
//     process in CGROUP_DIR and removes it.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "cgroup.hpp"
#include "proc.hpp"
#include "shepherd.hpp"
#include "spawn.hpp"

using namespace pardo;

namespace {

int g_status_fd = -1;
pid_t g_leader = -1;
bool g_leader_reaped = false;
bool g_linger = false;

int64_t tv_us(const struct timeval& tv) { return static_cast<int64_t>(tv.tv_sec) * 1000000 + tv.tv_usec; }

void send(const ShepherdMsg& m) {
  if (g_status_fd < 0) return;
  ssize_t r;
  do {
    r = write(g_status_fd, &m, sizeof m);
  } while (r < 0 && errno == EINTR);
}

[[noreturn]] void finish() {
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  ShepherdMsg m{MSG_TREE_GONE, 0, 0, 0, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss};
  send(m);
  _exit(0);
}

// Reap every child that has exited. Returns false once there are no children left.
bool reap_all(bool* leader_just_exited) {
  while (true) {
    int st;
    struct rusage ru;
    pid_t p = wait4(-1, &st, WNOHANG, &ru);
    if (p > 0) {
      if (p == g_leader) {
        g_leader_reaped = true;
        *leader_just_exited = true;
        ShepherdMsg m{MSG_LEADER_EXIT, st, 0, 0, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss};
        send(m);
      }
      continue;
    }
    if (p == 0) return true;
    if (errno == EINTR) continue;
    return errno != ECHILD;
  }
}

void signal_tree(int sig) {
  // The leader's group first (cheap, catches most of a tree at once) while the leader is
  // unreaped and so pins the group id; then every descendant found in /proc, which
  // catches setsid/setpgid escapees that still descend from us.
  if (!g_leader_reaped) kill(-g_leader, sig);
  if (!g_leader_reaped && sig == SIGTERM) kill(-g_leader, SIGCONT);
  for (pid_t p : descendants_of(getpid())) {
    kill(p, sig);
    if (sig == SIGTERM) kill(p, SIGCONT);  // a stopped process cannot act on TERM
    // A process with SIGKILL pending can only die; where we may, let it do so before the
    // busy processes of a saturated machine (it cannot run its own code again). The same,
    // more gently, for one that SIGTERM will end.
    if (sig == SIGKILL) hasten_one(p);
    if (sig == SIGTERM) hasten_fatal(p, sig);
  }
}

// SIGKILL everything below us until nothing is left. Orphans of killed processes are
// re-parented to us (we are a subreaper), so each round finds what the last one missed.
[[noreturn]] void kill_everything(int sigfd) {
  while (true) {
    signal_tree(SIGKILL);
    bool dummy = false;
    if (!reap_all(&dummy)) finish();
    struct pollfd p{sigfd, POLLIN, 0};
    poll(&p, 1, 10);
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) > 0) {
    }
  }
}

int task_main(int argc, char** argv) {
  int ctl_fd = -1;
  std::vector<std::string> execs, args;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a.rfind("--status-fd=", 0) == 0) g_status_fd = atoi(a.c_str() + 12);
    else if (a.rfind("--ctl-fd=", 0) == 0) ctl_fd = atoi(a.c_str() + 9);
    else if (a == "--linger") g_linger = true;
    else if (a.rfind("--exec=", 0) == 0) execs.push_back(a.substr(7));
  }
  for (; i < argc; ++i) args.push_back(argv[i]);
  if (g_status_fd < 0 || ctl_fd < 0 || args.empty()) {
    fprintf(stderr, "pardo-shepherd: bad arguments\n");
    return 2;
  }
  if (execs.empty()) execs.push_back(args[0]);
  fcntl(g_status_fd, F_SETFD, FD_CLOEXEC);
  fcntl(ctl_fd, F_SETFD, FD_CLOEXEC);
  signal(SIGPIPE, SIG_IGN);  // a vanished supervisor must not kill us before we clean up
  prctl(PR_SET_CHILD_SUBREAPER, 1);

  sigset_t mask;
  sigemptyset(&mask);
  for (int s : {SIGCHLD, SIGTERM, SIGHUP, SIGINT, SIGQUIT}) sigaddset(&mask, s);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

  ChildPlan plan;
  plan.exec_paths = execs;
  plan.argv = args;
  // Pass on stdio and whatever else the supervisor placed below our own fds.
  for (int fd = 0; fd < g_status_fd; ++fd)
    if (fcntl(fd, F_GETFD) >= 0) plan.fds.push_back({fd, fd});
  plan.new_session = true;
  plan.pdeathsig = SIGKILL;
  plan.base_nice = own_nice();  // what the supervisor gave us for the task
  SpawnOutcome o = spawn_child(plan, -1);
  if (o.stage != STAGE_NONE) {
    ShepherdMsg m{MSG_EXEC_FAILED, o.stage, o.err, 0, 0, 0, 0};
    send(m);
    finish();
  }
  if (o.pidfd >= 0) close(o.pidfd);
  g_leader = o.pid;
  // We only wait and kill; where permitted, do it ahead of busy tasks (as the supervisor
  // thread does), whatever niceness the task asked for. The task was started first, so it
  // inherits none of this.
  raise_own_priority();
  ShepherdMsg started{MSG_STARTED, o.pid, 0, 0, 0, 0, 0};
  send(started);
  // Our stdio belongs to the task; hold none of it, so the task's pipes reach EOF as soon
  // as the task's own processes are gone.
  int devnull = open("/dev/null", O_RDWR);
  for (int fd = 0; fd < g_status_fd; ++fd) dup2(devnull, fd);
  if (devnull >= g_status_fd) close(devnull);

  struct pollfd pfd[2] = {{sigfd, POLLIN, 0}, {ctl_fd, POLLIN, 0}};
  while (true) {
    int n = poll(pfd, 2, -1);
    if (n < 0 && errno != EINTR) kill_everything(sigfd);
    if (pfd[0].revents) {
      struct signalfd_siginfo si;
      bool stop = false;
      while (read(sigfd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo != SIGCHLD) stop = true;
      }
      if (stop) kill_everything(sigfd);
      bool leader_exited = false;
      bool any_left = reap_all(&leader_exited);
      if (!any_left && g_leader_reaped) finish();  // the common case: nothing left to kill
      if (leader_exited && !g_linger) kill_everything(sigfd);
    }
    if (pfd[1].revents) {
      char c;
      ssize_t r = read(ctl_fd, &c, 1);
      if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) kill_everything(sigfd);
      if (r == 1 && c == CTL_KILL) kill_everything(sigfd);
      if (r == 1 && c == CTL_TERM) signal_tree(SIGTERM);
    }
  }
}

int guardian_main(const std::string& dir) {
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP}) signal(s, SIG_IGN);
  char buf[256];
  while (true) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0 && errno != EINTR) break;
  }
  cgroup_release_subtree(dir, 10000);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && strncmp(argv[1], "--guardian=", 11) == 0) return guardian_main(argv[1] + 11);
  if (argc >= 2 && strcmp(argv[1], "--task") == 0) return task_main(argc, argv);
  fprintf(stderr,
          "pardo-shepherd is started by pardo's engine; it is not meant to be run by hand.\n");
  return 2;
}
