#include "isolation.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <sstream>

#include "cgroup.hpp"
#include "proc.hpp"
#include "shepherd.hpp"
#include "supervisor.hpp"
#include "task.hpp"

namespace pardo {
namespace {

// Processes with SIGKILL pending can only die; on a saturated machine they still wait for
// a CPU to do it. Making them real-time (or failing that, nice -20) where we may gets them
// off the run queue at once. They cannot run any of their own code again, so this lends
// them nothing. After SIGTERM, only the threads it will end, and only nice -20
// (hasten_dying).
void hasten_death(const std::string& cgroup_dir, int sig) {
  // Threads, not processes: scheduling is per thread, and every thread must exit.
  std::string procs;
  if (!read_file(cgroup_dir + "/cgroup.threads", &procs)) return;
  const char* p = procs.c_str();
  while (*p) {
    char* end;
    long tid = strtol(p, &end, 10);
    if (end == p) break;
    hasten_dying(tid, sig);
    p = *end ? end + 1 : end;
  }
}

int64_t tv_us(const struct timeval& tv) {
  return static_cast<int64_t>(tv.tv_sec) * 1000000 + tv.tv_usec;
}

// Reap our direct child if it has exited (its pidfd is then dropped). True when reaped now.
bool reap(Supervisor& s, TaskState& t, int* status, struct rusage* ru) {
  if (t.child_reaped) return false;
  pid_t r;
  do {
    r = wait4(t.child_pid, status, WNOHANG, ru);
  } while (r < 0 && errno == EINTR);
  if (r == 0 || (r < 0 && errno != ECHILD)) return false;
  if (r < 0) {  // someone else reaped it (should not happen)
    *status = 0;
    memset(ru, 0, sizeof *ru);
  }
  t.child_reaped = true;
  s.drop_pidfd(t);  // the pidfd has nothing more to say
  return true;
}

// A guardian process (pardo-shepherd in a guardian mode) and the write end of its stdin:
// closing it, or our death, is its signal to kill what we leave.
struct Guardian {
  int fd = -1;
  pid_t pid = -1;
  int pidfd = -1;

  // Close its stdin and give it a moment to do its work and exit.
  void stop() {
    if (fd >= 0) close(fd);
    fd = -1;
    if (pidfd >= 0) {
      struct pollfd p{pidfd, POLLIN, 0};
      poll(&p, 1, 2000);
      close(pidfd);
      pidfd = -1;
    }
    if (pid > 0) waitpid(pid, nullptr, WNOHANG);
    pid = -1;
  }
};

// ------------------------------------------------------------------ cgroup

class CgroupRung : public Rung {
 public:
  CgroupRung(std::unique_ptr<CgroupTree> tree, Guardian guardian)
      : tree_(std::move(tree)), guardian_(guardian), direct_(clone3_into_cgroup_supported()),
        async_(direct_ && async_spawn_supported()) {}

  const char* name() const override { return "cgroup"; }

  SpawnOutcome start(Supervisor&, TaskState& t, ChildPlan& plan) override {
    SpawnOutcome o;
    std::string why;
    Leaf* leaf = tree_->acquire(&why);
    if (!leaf) {
      o.stage = STAGE_CGROUP;
      o.err = errno ? errno : EIO;
      return o;
    }
    if (t.req.memory_limit > 0 && tree_->set_memory_max(leaf, t.req.memory_limit) == 0)
      plan.rlimit_as = 0;  // the cgroup caps the whole tree; no per-process limit needed
    // The leader dies with the supervisor thread; the guardian takes care of the rest.
    plan.pdeathsig = SIGKILL;
    if (!direct_) plan.cgroup_procs = leaf->path + "/cgroup.procs";
    // Placed into its leaf by clone3 itself, the child is in reach of cgroup.kill from its
    // first instruction, so there is no need to wait for its exec: the next task can start.
    o = async_ ? spawn_child_async(plan, leaf->dir_fd, &t.handle->launch)
               : spawn_child(plan, direct_ ? leaf->dir_fd : -1);
    if (o.stage != STAGE_NONE) {
      tree_->release(leaf);
      return o;
    }
    t.leaf = leaf;
    t.child_pid = o.pid;
    t.pidfd = o.pidfd;
    t.c.pid = o.pid;
    return o;
  }

  void on_child_exit(Supervisor& s, TaskState& t) override {
    int st;
    struct rusage ru;
    if (!reap(s, t, &st, &ru)) return;
    s.leader_exited(t, st, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss);
    check_gone(s, t);
  }

  void on_event(Supervisor& s, TaskState& t, int kind) override {
    if (kind == FD_EVENTS) check_gone(s, t);
  }

  bool tree_gone_at_exit(TaskState& t) override {
    // The leader is a zombie once its pidfd reports (exit_notify comes after cgroup_exit),
    // so "populated 0" now means every process of the tree has exited.
    return t.leaf && !t.leader_done && cgroup_populated(t.leaf->events_fd) == 0;
  }

  void signal_tree(Supervisor& s, TaskState& t, int sig) override {
    if (!t.leaf) return;
    if (sig == SIGKILL) {
      if (cgroup_populated(t.leaf->events_fd) == 0) {
        if (t.leader_done) s.tree_gone(t);
        return;
      }
      t.leaf->killed = true;
      cgroup_kill(t.leaf->path);  // atomic: a forking tree cannot outrun it
      hasten_death(t.leaf->path, SIGKILL);
      watch_events(s, t);
      return;
    }
    // cgroup.kill only knows SIGKILL: other signals go to each member in turn.
    std::string procs;
    if (!read_file(t.leaf->path + "/cgroup.procs", &procs)) return;
    std::istringstream in(procs);
    pid_t pid;
    while (in >> pid) {
      kill(pid, sig);
      if (sig == SIGTERM) kill(pid, SIGCONT);  // a stopped process cannot act on TERM
    }
    if (sig == SIGTERM) hasten_death(t.leaf->path, sig);  // those it will end
  }

  void finish(Supervisor& s, TaskState& t) override {
    if (!t.leaf) return;
    if (t.events_watched) {
      s.unwatch_fd(t.leaf->events_fd);
      t.events_watched = false;
    }
    if (t.leaf->cpu_fd >= 0) {
      uint64_t u, y;
      CgroupTree::cpu_delta(t.leaf, &u, &y);
      t.c.cpu_user_us = static_cast<int64_t>(u);
      t.c.cpu_sys_us = static_cast<int64_t>(y);
    }
    // A leaf is reused only once it was seen empty; otherwise (a tree that would not die)
    // it is set aside.
    if (!t.gone && !t.leaf->quarantined && cgroup_populated(t.leaf->events_fd) != 0)
      t.leaf->quarantined = true;
    tree_->release(t.leaf);
    t.leaf = nullptr;
  }

  void shutdown() override {
    tree_->destroy();
    guardian_.stop();  // EOF: the guardian finds nothing left, exits
  }

  ~CgroupRung() override {
    if (guardian_.fd >= 0) shutdown();
  }

 private:
  void watch_events(Supervisor& s, TaskState& t) {
    if (t.events_watched) return;
    t.events_watched = true;
    s.watch_fd(t, t.leaf->events_fd, FD_EVENTS, EPOLLPRI);
  }

  void check_gone(Supervisor& s, TaskState& t) {
    if (t.gone || !t.leaf) return;
    int p = cgroup_populated(t.leaf->events_fd);
    if (p == 0) {
      if (t.events_watched) {
        s.unwatch_fd(t.leaf->events_fd);
        t.events_watched = false;
      }
      if (t.leader_done) s.tree_gone(t);
    } else if (t.leader_done) {
      watch_events(s, t);  // lingering or dying tree: wait for "populated 0"
    }
  }

  std::unique_ptr<CgroupTree> tree_;
  Guardian guardian_;
  bool direct_;  // clone3 places the child into its leaf (else the child moves itself there)
  bool async_;   // and so spawn_child_async can be used
};

// ------------------------------------------------------------------ shepherd

class ShepherdRung : public Rung {
 public:
  explicit ShepherdRung(std::string path) : path_(std::move(path)) {}
  const char* name() const override { return "shepherd"; }

  SpawnOutcome start(Supervisor& s, TaskState& t, ChildPlan& plan) override {
    SpawnOutcome o;
    int ctl[2], st[2];
    if (pipe2(ctl, O_CLOEXEC) < 0) {
      o.stage = STAGE_CLONE;
      o.err = errno;
      return o;
    }
    if (pipe2(st, O_CLOEXEC) < 0) {
      o.stage = STAGE_CLONE;
      o.err = errno;
      close(ctl[0]);
      close(ctl[1]);
      return o;
    }
    int top = 2;
    for (auto& m : plan.fds) top = m.first > top ? m.first : top;
    int status_target = top + 1, ctl_target = top + 2;
    std::vector<std::string> argv{path_, "--task", "--status-fd=" + std::to_string(status_target),
                                  "--ctl-fd=" + std::to_string(ctl_target)};
    if (t.req.linger) argv.push_back("--linger");
    for (auto& p : plan.exec_paths) argv.push_back("--exec=" + p);
    argv.push_back("--");
    for (auto& a : plan.argv) argv.push_back(a);
    plan.argv = std::move(argv);
    plan.exec_paths = {path_};
    plan.pdeathsig = SIGTERM;  // the shepherd catches it and kills its tree
    plan.fds.push_back({status_target, st[1]});
    plan.fds.push_back({ctl_target, ctl[0]});
    std::vector<int> temps = normalize_fds(plan.fds);
    o = spawn_child(plan, -1);
    for (int fd : temps) close(fd);
    close(st[1]);
    close(ctl[0]);
    // Our helper could not be exec'd: say so, rather than blame the task's program.
    if (o.stage == STAGE_EXEC) o.stage = STAGE_HELPER;
    if (o.stage != STAGE_NONE) {
      close(st[0]);
      close(ctl[1]);
      return o;
    }
    fcntl(st[0], F_SETFL, O_NONBLOCK);
    fcntl(ctl[1], F_SETFL, O_NONBLOCK);
    t.status_fd = st[0];
    t.ctl_fd = ctl[1];
    t.child_pid = o.pid;
    t.pidfd = o.pidfd;
    s.watch_fd(t, t.status_fd, FD_STATUS, EPOLLIN);
    return o;
  }

  void on_child_exit(Supervisor& s, TaskState& t) override {
    int st;
    struct rusage ru;
    if (!reap(s, t, &st, &ru)) return;
    read_status(s, t);  // everything the shepherd said before it exited
    if (!t.leader_done) {
      // The shepherd died without reporting its task's end: it was killed from outside,
      // or could not start. Report that rather than guess.
      if (!t.got_started && t.c.spawn_stage == STAGE_NONE) {
        t.c.spawn_stage = STAGE_HELPER;
        t.c.spawn_errno = WIFSIGNALED(st) ? EINTR : ECHILD;
      } else {
        t.c.note = "the shepherd process died unexpectedly";
      }
      s.leader_exited(t, st, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss);
      if (!t.got_started) s.publish_pid(t);
    }
    s.tree_gone(t);  // the shepherd exits only once its tree is reaped
  }

  void on_event(Supervisor& s, TaskState& t, int kind) override {
    if (kind == FD_STATUS) read_status(s, t);
  }

  void signal_tree(Supervisor&, TaskState& t, int sig) override {
    if (t.ctl_fd < 0 || t.child_reaped) return;
    // After the leader's exit the shepherd kills the rest by itself (unless lingering).
    if (sig == SIGKILL && t.leader_done && !t.req.linger) return;
    char c = sig == SIGKILL ? CTL_KILL : CTL_TERM;
    ssize_t r = write(t.ctl_fd, &c, 1);
    (void)r;
  }

  void finish(Supervisor& s, TaskState& t) override {
    if (t.status_fd >= 0) {
      s.unwatch_fd(t.status_fd);
      close(t.status_fd);
      t.status_fd = -1;
    }
    if (t.ctl_fd >= 0) {
      close(t.ctl_fd);
      t.ctl_fd = -1;
    }
  }

 private:
  void read_status(Supervisor& s, TaskState& t) {
    if (t.status_fd < 0) return;
    char buf[4096];
    while (true) {
      ssize_t n = read(t.status_fd, buf, sizeof buf);
      if (n > 0) {
        t.status_buf.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || (n < 0 && errno != EAGAIN)) {
        s.unwatch_fd(t.status_fd);
        close(t.status_fd);
        t.status_fd = -1;
      }
      break;
    }
    while (t.status_buf.size() >= sizeof(ShepherdMsg)) {
      ShepherdMsg m;
      memcpy(&m, t.status_buf.data(), sizeof m);
      t.status_buf.erase(0, sizeof m);
      switch (m.type) {
        case MSG_STARTED:
          t.got_started = true;
          t.c.pid = m.a;
          s.publish_pid(t);
          break;
        case MSG_EXEC_FAILED:
          t.got_started = true;
          t.c.spawn_stage = m.a;
          t.c.spawn_errno = m.b;
          t.c.pid = -1;
          t.leader_done = true;
          s.publish_pid(t);
          break;
        case MSG_LEADER_EXIT:
          s.leader_exited(t, m.a, m.utime_us, m.stime_us, m.maxrss_kb);
          break;
        case MSG_TREE_GONE:
          t.c.cpu_user_us = m.utime_us;
          t.c.cpu_sys_us = m.stime_us;
          if (m.maxrss_kb > t.c.max_rss_kb) t.c.max_rss_kb = m.maxrss_kb;
          break;
      }
    }
  }

  std::string path_;
};

// ------------------------------------------------------------------ process group

class PgroupRung : public Rung {
 public:
  // Without a guardian (fd -1) the leaders die with us, by PDEATHSIG, but what they
  // started does not.
  explicit PgroupRung(Guardian guardian) : guardian_(guardian) {}

  const char* name() const override { return "pgroup"; }

  SpawnOutcome start(Supervisor&, TaskState& t, ChildPlan& plan) override {
    plan.pdeathsig = SIGKILL;
    // No need to wait for the exec: until the child has made its group (setsid, before
    // the exec) signal_tree reaches it by pid.
    SpawnOutcome o = async_spawn_supported() ? spawn_child_async(plan, -1, &t.handle->launch)
                                             : spawn_child(plan, -1);
    if (o.stage == STAGE_NONE) {
      t.child_pid = o.pid;
      t.pidfd = o.pidfd;
      t.c.pid = o.pid;
      tell_guardian(o.pid);  // its group (setsid: pgid = pid) dies with us from now on
    }
    return o;
  }

  void on_child_exit(Supervisor& s, TaskState& t) override {
    if (t.child_reaped) return;
    // Kill the group while the unreaped leader still pins its id, so the signal cannot
    // reach a new group that reuses the number.
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, t.child_pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0) return;
    if (!t.req.linger) killpg(t.child_pid, SIGKILL);
    // Before the reap: until then the zombie leader pins the group's id, so the guardian
    // never holds an id that another group may have taken.
    tell_guardian(-t.child_pid);
    int st;
    struct rusage ru;
    if (!reap(s, t, &st, &ru)) return;
    t.kill_sent = true;  // as far as this rung can tell, the tree is dealt with
    s.leader_exited(t, st, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss);
    s.tree_gone(t);
  }

  void on_event(Supervisor&, TaskState&, int) override {}
  bool knows_tree_end() const override { return false; }

  void signal_tree(Supervisor& s, TaskState& t, int sig) override {
    if (t.child_reaped) return;
    // A child not yet past its exec may not have its group yet: signal it by pid too
    // (it has no children of its own before the exec).
    if (!s.settle_launch(t)) kill(t.child_pid, sig);
    killpg(t.child_pid, sig);
    if (sig == SIGTERM) killpg(t.child_pid, SIGCONT);  // a stopped process cannot act on TERM
    if ((sig == SIGKILL || sig == SIGTERM) && !t.leader_done) {
      // A live tree ended (deadline, cancel): on a saturated machine its processes wait
      // for a CPU to die on. Give it to them, as the cgroup rung does with its leaf.
      hasten_dying(t.child_pid, sig);
      for (pid_t p : descendants_of(t.child_pid)) hasten_dying(p, sig);
    }
  }

  void finish(Supervisor&, TaskState&) override {}

  void shutdown() override { guardian_.stop(); }  // EOF: it kills what is still listed

  ~PgroupRung() override { shutdown(); }

 private:
  // One 4-byte write per group start and end: +pgid, -pgid.
  void tell_guardian(int32_t v) {
    if (guardian_.fd < 0) return;
    ssize_t n;
    do {
      n = write(guardian_.fd, &v, sizeof v);
    } while (n < 0 && errno == EINTR);
  }

  Guardian guardian_;
};

// Start a guardian: a pardo-shepherd (in mode `mode`) that waits for EOF on its stdin and
// then kills what the supervisor left: its cgroup subtree, or its process groups. EOF comes
// when this process dies, however it dies, because only we hold the write end.
bool start_guardian(const std::string& shepherd, const std::string& mode, Guardian* g,
                    std::string* why) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    *why = std::string("pipe: ") + strerror(errno);
    return false;
  }
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  ChildPlan plan;
  plan.exec_paths = {shepherd};
  plan.argv = {shepherd, mode};
  plan.fds = {{0, p[0]}, {1, devnull}, {2, devnull}};
  std::vector<int> temps = normalize_fds(plan.fds);
  SpawnOutcome o = spawn_child(plan, -1);
  for (int fd : temps) close(fd);
  close(p[0]);
  close(devnull);
  if (o.stage != STAGE_NONE) {
    close(p[1]);
    *why = "cannot start the guardian " + shepherd + ": " + strerror(o.err);
    return false;
  }
  // Room for many records: the guardian drains them at once, but a write must not wait
  // for it to be scheduled when tasks start in a burst.
  fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
  g->fd = p[1];
  g->pid = o.pid;
  g->pidfd = o.pidfd;
  return true;
}

}  // namespace

std::string cgroup_unavailable_reason() {
  std::string why;
  std::string mnt = find_cgroup2_mount(&why);
  if (mnt.empty()) return why;
  std::string home = own_cgroup_path();
  if (home.empty()) return "this process has no cgroup v2 path in /proc/self/cgroup";
  std::string dir = mnt + (home == "/" ? "" : home);
  if (access(dir.c_str(), W_OK) < 0)
    return "no write access to " + dir +
           ": run under `systemd-run --user --scope -p Delegate=yes ...` or as root";
  if (access((dir + "/cgroup.kill").c_str(), F_OK) < 0 && home != "/")
    return "the kernel has no cgroup.kill (needs Linux 5.14+)";
  return "";
}

RungChoice choose_rung(const std::string& wanted, const std::string& shepherd_path) {
  RungChoice ch;
  bool is_auto = wanted.empty() || wanted == "auto";
  if (!is_auto && wanted != "cgroup" && wanted != "shepherd" && wanted != "pgroup") {
    ch.error = "unknown isolation '" + wanted + "': use auto, cgroup, shepherd or pgroup";
    return ch;
  }
  bool have_shepherd = !shepherd_path.empty() && access(shepherd_path.c_str(), X_OK) == 0;
  std::string shepherd_why =
      have_shepherd ? "" : "the helper program " + shepherd_path + " is missing or not executable";
  std::string cg_why;
  if (is_auto || wanted == "cgroup") {
    if (!have_shepherd) {
      cg_why = shepherd_why + " (the cgroup rung needs it as its guardian)";
    } else if (auto tree = CgroupTree::create(&cg_why)) {
      Guardian g;
      std::string sub = tree->path();
      if (start_guardian(shepherd_path, "--guardian=" + sub, &g, &cg_why)) {
        ch.rung = std::make_unique<CgroupRung>(std::move(tree), g);
        ch.name = "cgroup";
        ch.reason = "each task runs in its own cgroup v2 leaf under " + sub;
        return ch;
      }
      tree->destroy();
    }
    if (!is_auto) {
      ch.error = cg_why;
      return ch;
    }
  }
  if (is_auto || wanted == "shepherd") {
    if (have_shepherd) {
      ch.rung = std::make_unique<ShepherdRung>(shepherd_path);
      ch.name = "shepherd";
      ch.reason = is_auto ? "cgroup unavailable: " + cg_why : "forced by configuration";
      return ch;
    }
    if (!is_auto) {
      ch.error = shepherd_why;
      return ch;
    }
  }
  Guardian g;
  std::string guardian_why;
  if (!have_shepherd || !start_guardian(shepherd_path, "--guardian-pgroups", &g, &guardian_why))
    g = Guardian{};
  ch.rung = std::make_unique<PgroupRung>(g);
  ch.name = "pgroup";
  ch.reason = is_auto ? "cgroup unavailable: " + cg_why + "; shepherd unavailable: " + shepherd_why
                      : "forced by configuration";
  if (g.fd < 0)
    ch.reason += "; no guardian (" + (have_shepherd ? guardian_why : shepherd_why) +
                 "): if pardo is SIGKILLed, what its tasks started survives";
  return ch;
}

}  // namespace pardo
