// The process-group rung, the last resort: the task leads a session of its own and its
// group is signalled; the tree counts as gone once the leader is reaped and the group was
// SIGKILLed. A process that leaves the group (setsid, double fork) escapes it.
//
// Where the helper program is installed, the task's keeper (rungs/keepers.hpp) starts it,
// signals its group, kills the group when the leader exits (before reaping it, so the id
// cannot have been taken by another group), and kills it if this process or the launcher
// dies. Without the helper, the supervisor starts the leader itself (DirectPgroupRung):
// the leaders die of PDEATHSIG with us, but what they started does not, and the task's
// max_rss includes this process's own peak (the child shares its memory until its exec).
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>

#include "proc.hpp"
#include "rungs/keepers.hpp"
#include "rungs/rung.hpp"
#include "shepherd/shepherd.hpp"
#include "supervisor.hpp"
#include "task.hpp"

namespace pardo {
namespace {

class PgroupRung : public KeeperRung {
 public:
  explicit PgroupRung(const std::string& helper) : KeeperRung(helper, shepherd::KEEP_PGROUP) {}
  const char* name() const override { return "pgroup"; }
  bool knows_tree_end() const override { return false; }

 protected:
  // The keeper killed the group (unless lingering) before it reaped the leader: as far as
  // this rung can tell, the tree is dealt with.
  void after_leader_exit(Supervisor& s, TaskState& t) override {
    t.kill_sent = true;
    s.tree_gone(t);
  }
};

class DirectPgroupRung : public Rung {
 public:

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
    int st;
    struct rusage ru;
    if (!reap_child(s, t, &st, &ru)) return;
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
};

}  // namespace

std::unique_ptr<Rung> make_pgroup_rung(const std::string& shepherd_path) {
  if (shepherd_path.empty()) return std::make_unique<DirectPgroupRung>();
  return std::make_unique<PgroupRung>(shepherd_path);
}

}  // namespace pardo
