// The process-group rung, the last resort: the task leads a session of its own and its
// group is signalled; the tree counts as gone once the leader is reaped and the group was
// SIGKILLed. A process that leaves the group (setsid, double fork) escapes it. A guardian
// (pardo-shepherd --guardian-pgroups) is told each group as it is made and done with, and
// SIGKILLs the groups still listed if this process dies: the leaders die of PDEATHSIG, but
// what they started would not.
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>

#include "proc.hpp"
#include "rungs/direct.hpp"
#include "rungs/rung.hpp"
#include "supervisor.hpp"
#include "task.hpp"

namespace pardo {
namespace {

class PgroupRung : public Rung {
 public:
  // Without a guardian (fd -1) the leaders die with us, by PDEATHSIG, but what they
  // started does not. Without pardo-shepherd (empty path) tasks are cloned from this
  // process, and their max_rss counts its peak (rungs/direct.hpp says why).
  PgroupRung(Guardian guardian, const std::string& shepherd_path) : guardian_(guardian) {
    if (!shepherd_path.empty())
      launcher_ = std::make_unique<DirectLauncher>(shepherd_path, *this, guardian_.fd);
  }

  const char* name() const override { return "pgroup"; }

  SpawnOutcome start(Supervisor& s, TaskState& t, ChildPlan& plan) override {
    // Through the launcher, the task itself tells the guardian its group before its exec.
    if (launcher_ && !t.req.rss_unread) return launcher_->start(s, t, plan, -1);
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

  void on_rung_event(Supervisor& s) override {
    if (launcher_) launcher_->on_event(s);
  }
  void before_sleep(Supervisor& s) override {
    if (launcher_) launcher_->before_sleep(s);
  }

  void on_child_exit(Supervisor& s, TaskState& t) override {
    if (t.child_reaped) return;
    if (launcher_) launcher_->await(s, t);  // its pid
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
    if (!reap_child(s, t, &st, &ru)) return;
    if (launcher_) launcher_->explain_exit(s, st);
    t.kill_sent = true;  // as far as this rung can tell, the tree is dealt with
    s.leader_exited(t, st, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss);
    s.tree_gone(t);
  }

  void on_event(Supervisor&, TaskState&, int) override {}
  bool knows_tree_end() const override { return false; }

  void signal_tree(Supervisor& s, TaskState& t, int sig) override {
    if (t.child_reaped) return;
    if (launcher_ && launcher_->awaiting(t)) {
      launcher_->defer_signal(t, sig);  // sent once its pid is known
      return;
    }
    if (t.child_pid <= 0) return;  // never started (its launcher died first)
    // A child not yet past its exec may not have its group yet: signal it by pid too
    // (it has no children of its own before the exec).
    // (Started by the launcher, it may be before its setsid too: no group yet, ESRCH.)
    bool by_pid = !s.settle_launch(t);
    if (by_pid) kill(t.child_pid, sig);
    if (killpg(t.child_pid, sig) < 0 && errno == ESRCH && !by_pid) kill(t.child_pid, sig);
    if (sig == SIGTERM) killpg(t.child_pid, SIGCONT);  // a stopped process cannot act on TERM
    if ((sig == SIGKILL || sig == SIGTERM) && !t.leader_done) {
      // A live tree ended (deadline, cancel): on a saturated machine its processes wait
      // for a CPU to die on. Give it to them, as the cgroup rung does with its leaf.
      hasten_dying(t.child_pid, sig);
      for (pid_t p : descendants_of(t.child_pid)) hasten_dying(p, sig);
    }
  }

  void finish(Supervisor& s, TaskState& t) override {
    if (launcher_) launcher_->settle(s, t);
  }

  void shutdown() override {
    if (launcher_) launcher_->stop();  // it holds the guardian's pipe too
    guardian_.stop();                  // EOF: it kills what is still listed
  }

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
  std::unique_ptr<DirectLauncher> launcher_;
};

}  // namespace

std::unique_ptr<Rung> make_pgroup_rung(const std::string& shepherd_path, std::string* why) {
  Guardian g;
  if (!shepherd_path.empty()) {
    why->clear();
    if (!start_guardian(shepherd_path, {"--guardian-pgroups"}, &g, why)) g = Guardian{};
  }
  return std::make_unique<PgroupRung>(g, shepherd_path);
}

}  // namespace pardo
