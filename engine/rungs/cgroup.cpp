// The cgroup rung: each task in a cgroup v2 leaf of this supervisor's subtree
// (cgroup_tree.hpp), placed there by clone3 itself; the tree is killed with cgroup.kill and
// known to be gone when cgroup.events says "populated 0". A guardian (pardo-shepherd
// --guardian) kills and removes the subtree if this process dies.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.hpp"
#include "rungs/cgroup_tree.hpp"
#include "rungs/direct.hpp"
#include "rungs/rung.hpp"
#include "spawn.hpp"
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

class CgroupRung : public Rung {
 public:
  CgroupRung(std::unique_ptr<CgroupTree> tree, Guardian guardian, const std::string& shepherd_path)
      : tree_(std::move(tree)), guardian_(guardian), launcher_(shepherd_path, *this),
        direct_(clone3_into_cgroup_supported()), async_(direct_ && async_spawn_supported()) {}

  const char* name() const override { return "cgroup"; }

  SpawnOutcome start(Supervisor& s, TaskState& t, ChildPlan& plan) override {
    SpawnOutcome o;
    int err = EIO;
    Leaf* leaf = tree_->acquire(&err);
    if (!leaf) {
      o.stage = STAGE_CGROUP;
      o.err = err;
      return o;
    }
    if (t.req.memory_limit > 0 && tree_->set_memory_max(leaf, t.req.memory_limit) == 0)
      plan.rlimit_as = 0;  // the cgroup caps the whole tree; no per-process limit needed
    // Into its leaf by clone3 itself: it is in reach of cgroup.kill from its first
    // instruction, so the next task starts without waiting for its exec. Cloned by pardo's
    // launcher, so that its max_rss is its own (rungs/direct.hpp), unless nobody reads it.
    if (!t.req.rss_unread) {
      o = launcher_.start(s, t, plan, leaf->dir_fd);
    } else {
      plan.pdeathsig = SIGKILL;  // the guardian takes care of the rest
      if (!direct_) plan.cgroup_procs = leaf->path + "/cgroup.procs";
      o = async_ ? spawn_child_async(plan, leaf->dir_fd, &t.handle->launch)
                 : spawn_child(plan, direct_ ? leaf->dir_fd : -1);
      t.child_pid = o.pid;
      t.pidfd = o.pidfd;
      t.c.pid = o.pid;
    }
    if (o.stage != STAGE_NONE) {
      tree_->release(leaf);
      return o;
    }
    t.leaf = leaf;
    return o;
  }

  void on_child_exit(Supervisor& s, TaskState& t) override {
    launcher_.await(s, t);  // its pid
    int st;
    struct rusage ru;
    if (!reap_child(s, t, &st, &ru)) return;
    launcher_.explain_exit(s, st);
    s.leader_exited(t, st, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss);
    check_gone(s, t);
  }

  void on_event(Supervisor& s, TaskState& t, int kind) override {
    if (kind == FD_EVENTS) check_gone(s, t);
  }

  void on_rung_event(Supervisor& s) override { launcher_.on_event(s); }
  void before_sleep(Supervisor& s) override { launcher_.before_sleep(s); }

  bool tree_gone_at_exit(TaskState& t) override {
    // The leader is a zombie once its pidfd reports (exit_notify comes after cgroup_exit),
    // so "populated 0" now means every process of the tree has exited.
    return t.leaf && !t.leader_done && cgroup_populated(t.leaf->events_fd) == 0;
  }

  void signal_tree(Supervisor& s, TaskState& t, int sig) override {
    if (!t.leaf) return;
    // Not cloned yet, perhaps: once its pid is known (an empty leaf is not a gone tree).
    if (launcher_.awaiting(t)) {
      launcher_.defer_signal(t, sig);
      return;
    }
    if (sig == SIGKILL) {
      if (cgroup_populated(t.leaf->events_fd) == 0) {
        if (t.leader_done) s.tree_gone(t);
        return;
      }
      t.leaf->killed = true;
      // Atomic (cgroup.kill, or the leaf frozen first where the kernel lacks it): a forking
      // tree cannot outrun it. Should the kernel refuse (it has no reason to: the leaf is
      // ours and exists), the members are killed one by one instead; one forked meanwhile
      // keeps the leaf populated, and the kill-wait bound reports it.
      if (cgroup_kill(t.leaf->path.c_str(), cgroup_kills_by_freeze()) != 0)
        cgroup_signal_members(t.leaf->path.c_str(), SIGKILL);
      hasten_death(t.leaf->path, SIGKILL);
      watch_events(s, t);
      return;
    }
    // cgroup.kill only knows SIGKILL: other signals go to each member in turn.
    cgroup_signal_members(t.leaf->path.c_str(), sig);
    if (sig == SIGTERM) hasten_death(t.leaf->path, sig);  // those it will end
  }

  void finish(Supervisor& s, TaskState& t) override {
    if (!t.leaf) return;
    launcher_.settle(s, t);
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
    launcher_.stop();
    tree_->destroy();
    guardian_.stop();  // EOF: the guardian finds nothing left, exits
  }

  ~CgroupRung() override {
    if (guardian_.fd >= 0) shutdown();
  }

 private:
  void watch_events(Supervisor& s, TaskState& t) {
    if (t.events_watched) return;
    t.events_watched = s.watch_fd(t, t.leaf->events_fd, FD_EVENTS, EPOLLPRI);
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
  DirectLauncher launcher_;
  bool direct_;  // clone3 places a child of ours into its leaf (else it moves itself there)
  bool async_;   // and so spawn_child_async can be used
};

}  // namespace

std::unique_ptr<Rung> make_cgroup_rung(const std::string& shepherd_path, std::string* subtree,
                                       std::string* why) {
  auto tree = CgroupTree::create(why);
  if (!tree) return nullptr;
  Guardian g;
  *subtree = tree->path();
  // Without cgroup.kill (Linux 5.2-5.13) the guardian kills the subtree by freezing it.
  std::vector<std::string> args = {"--guardian=" + *subtree};
  if (cgroup_kills_by_freeze()) args.push_back("--freeze");
  if (!start_guardian(shepherd_path, args, &g, why)) {
    tree->destroy();
    return nullptr;
  }
  return std::make_unique<CgroupRung>(std::move(tree), g, shepherd_path);
}

std::string cgroup_unavailable_reason() {
  std::string why;
  std::string mnt = find_cgroup2_mount(&why);
  if (mnt.empty()) return why;
  if (!start_features().pidfd) return kNoPidfd;
  std::string home = own_cgroup_path();
  if (home.empty()) return "this process has no cgroup v2 path in /proc/self/cgroup";
  std::string dir = mnt + (home == "/" ? "" : home);
  // What the kernel lacks first: no delegation can make up for it, so no advice then.
  if (home != "/" && !cgroup_has_file(dir, "cgroup.kill") && !cgroup_has_file(dir, "cgroup.freeze"))
    return "the kernel has neither cgroup.kill (Linux 5.14) nor cgroup.freeze (5.2) to kill a "
           "task's cgroup with";
  if (access(dir.c_str(), W_OK) < 0)
    return "no write access to " + dir +
           ": run under `systemd-run --user --scope -p Delegate=yes ...` or as root";
  return "";
}

}  // namespace pardo
