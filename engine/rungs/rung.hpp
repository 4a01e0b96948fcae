// The isolation ladder behind one small interface. Each rung answers four questions:
// how is a task started inside its unit, how is the whole tree signalled, what happens
// when our direct child exits, and how do we learn that the tree is gone.
//
//   cgroup    cloned by our launcher (rungs/direct.hpp) with clone3(CLONE_INTO_   rungs/cgroup.cpp
//             CGROUP) into a leaf, as our child; SIGKILL = cgroup.kill;
//             gone = cgroup.events "populated 0". A guardian process kills the subtree if
//             this process dies.
//   shepherd  a keeper, forked by our one launcher (pardo-shepherd --launcher)    rungs/shepherd.cpp
//             and kept for task after task: a subreaper that starts each task in a session
//             of its own, reports its status, and kills/reaps the whole tree (until
//             ECHILD); gone = the keeper says so. It kills the tree when we or the launcher
//             die (socket EOF, PDEATHSIG), and retires after any task it had to signal.
//   pgroup    cloned by our launcher as our child (rungs/direct.hpp); the task    rungs/pgroup.cpp
//             leads its own session; signals go to the process group;
//             gone is assumed once the group was SIGKILLed. Escapees (setsid, double fork)
//             survive. A guardian process kills the groups still live if this process
//             dies.
//
// The supervisor sees only Rung; which one runs is chosen once, by choose_rung (rung.cpp).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>
#include <sys/time.h>

#include <memory>
#include <string>
#include <vector>

#include "spawn.hpp"

namespace pardo {

class Supervisor;
struct TaskState;

class Rung {
 public:
  virtual ~Rung() = default;
  virtual const char* name() const = 0;
  // Spawn the task's first process. On success t.child_pid/t.pidfd are set.
  virtual SpawnOutcome start(Supervisor& s, TaskState& t, ChildPlan& plan) = 0;
  // Our direct child's pidfd became readable.
  virtual void on_child_exit(Supervisor& s, TaskState& t) = 0;
  // A rung-specific fd became ready (FD_EVENTS, FD_STATUS), or may have: a task whose
  // watch was refused is looked at on a timer instead (Supervisor::unwatchable).
  virtual void on_event(Supervisor& s, TaskState& t, int kind) = 0;
  // Send sig to every process of the tree (SIGKILL: all of it, atomically where possible).
  virtual void signal_tree(Supervisor& s, TaskState& t, int sig) = 0;
  // The task is complete: fill CPU figures and release what the rung held.
  virtual void finish(Supervisor& s, TaskState& t) = 0;
  // True when this rung learns exactly when the last process of a tree is gone. The
  // supervisor then keeps its own copy of each capture pipe's write end until that
  // moment, so the pipes never report end-of-file: a task's exit wakes the supervisor
  // once (its pidfd) instead of once per stream, and what is left in the pipes is read
  // when the tree is gone. A rung that cannot tell (pgroup) relies on end-of-file.
  virtual bool knows_tree_end() const { return true; }
  // Our direct child exited: true when, cheaply, the whole tree is known to be gone too.
  // The supervisor then hands the task's run permit to the next task before reaping the
  // child.
  virtual bool tree_gone_at_exit(TaskState&) { return false; }
  // The rung's own fd (Supervisor::watch_rung_fd) became ready.
  virtual void on_rung_event(Supervisor&) {}
  // The loop is about to sleep (end of a round).
  virtual void before_sleep(Supervisor&) {}
  // Kill everything and remove what the rung created (supervisor shutdown).
  virtual void shutdown() {}
};

struct RungChoice {
  std::unique_ptr<Rung> rung;
  std::string reason;  // why this rung (and why not the stronger ones)
  std::string error;   // set when the requested rung is unavailable
};

// Pick the rung: "auto" takes the strongest available; a named one must be available.
RungChoice choose_rung(const std::string& wanted, const std::string& shepherd_path);

// Why a rung that learns of exits from pidfds cannot work on this kernel.
extern const char* const kNoPidfd;

// Why the cgroup rung is or is not available here ("" when it is).
std::string cgroup_unavailable_reason();

// ---- for the rungs themselves (rungs/*.cpp) ----

// A guardian process (pardo-shepherd in a guardian mode) and the write end of its stdin:
// closing it, or our death, is its signal to kill what we leave. Shared by the cgroup rung
// (which it tells nothing: it kills the subtree) and the pgroup rung (which tells it each
// group as it is made and done with).
struct Guardian {
  int fd = -1;
  pid_t pid = -1;
  int pidfd = -1;

  // Close its stdin and give it a moment to do its work and exit.
  void stop();
};

// Start pardo-shepherd (`path`) with `args` after its name, `in` as its stdin and
// /dev/null as its stdout and stderr; pdeathsig: the signal it gets when this thread dies.
// `more`: further fds, as (target, source).
SpawnOutcome start_helper(const std::string& path, const std::vector<std::string>& args, int in,
                          int pdeathsig, const std::vector<std::pair<int, int>>& more = {});

// Start a guardian: pardo-shepherd with the arguments `args` (its mode first), which waits for EOF on
// its stdin and then kills what the supervisor left. EOF comes when this process dies,
// however it dies, because only we hold the write end. False and *why when it cannot start.
bool start_guardian(const std::string& shepherd, const std::vector<std::string>& args, Guardian* g,
                    std::string* why);

// The cgroup rung with its subtree and guardian; nullptr and *why when either cannot be
// had. *subtree: the subtree's path, for the reason choose_rung gives.
std::unique_ptr<Rung> make_cgroup_rung(const std::string& shepherd_path, std::string* subtree,
                                       std::string* why);
std::unique_ptr<Rung> make_shepherd_rung(const std::string& shepherd_path);
// The pgroup rung with its guardian when shepherd_path is usable (empty: none); without
// one, *why says why not.
std::unique_ptr<Rung> make_pgroup_rung(const std::string& shepherd_path, std::string* why);

// Reap our direct child if it has exited (its pidfd is then dropped). True when reaped now.
// `block`: the child is known to be exiting (it closed its last fd), so wait the moment
// until it is a zombie.
bool reap_child(Supervisor& s, TaskState& t, int* status, struct rusage* ru, bool block = false);

}  // namespace pardo
