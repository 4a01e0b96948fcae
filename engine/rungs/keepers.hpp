// The shepherd rung's tasks, started through pardo's launcher. One launcher per
// supervisor (pardo-shepherd --launcher,
// engine/shepherd/launcher.cpp), started at the first task and again after it dies, forks
// a keeper per task (engine/shepherd/keeper.cpp) that starts the task in a session of its
// own, reports on a status pipe (shepherd/protocol.hpp) and obeys a control pipe. The
// keeper is the launcher's child, not ours: the launcher reaps it and says how it ended
// (KEEPER_EXIT) as the last word on the same pipe.
//
//   supervisor ──request + fds──► launcher ──fork──► keeper ──vfork-style──► task
//        ▲                                             │
//        └──────────── status pipe ◄───────────────────┘ ◄── control pipe (T/K bytes)
//
// A fork of so small a process is cheap (the keeper was a program exec'd per task), and
// the task's max_rss is its own: a child of the Python process shares (or copies) its
// address space until its exec, and the kernel carries that space's peak into the task's
// rusage. The launcher links no libc and its address space is a few pages. (The cgroup
// and pgroup rungs' tasks are started by the same kind of launcher, without a keeper:
// rungs/direct.hpp.)
//
// The launcher's death is seen on its socket (its only other holder): every task in
// flight then fails with the reason (its keeper, orphaned, kills its tree and says so),
// and the next task starts a new launcher.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "rungs/rung.hpp"
#include "shepherd/protocol.hpp"

namespace pardo {

class KeeperRung : public Rung {
 public:
  explicit KeeperRung(std::string helper) : path_(std::move(helper)) {}
  ~KeeperRung() override { stop_launcher(); }

  SpawnOutcome start(Supervisor& s, TaskState& t, ChildPlan& plan) override;
  void on_child_exit(Supervisor&, TaskState&) override {}  // no child of ours per task
  void on_event(Supervisor& s, TaskState& t, int kind) override;
  void on_rung_event(Supervisor& s) override { launcher_died(s); }
  // The keeper signals the tree: T or K on its control pipe.
  void signal_tree(Supervisor& s, TaskState& t, int sig) override;
  void finish(Supervisor& s, TaskState& t) override;
  void shutdown() override { stop_launcher(); }

 private:
  struct Launcher {
    pid_t pid = -1;
    int pidfd = -1;
    int sock = -1;
  };
  bool ensure_launcher(Supervisor& s, SpawnOutcome* fail);
  void encode(TaskState& t, const ChildPlan& plan);
  int send_request(const std::vector<int>& fds);
  void launcher_died(Supervisor& s);
  void orphaned(TaskState& t);
  void stop_launcher();
  void keeper_done(Supervisor& s, TaskState& t, bool have_status, int st);
  void read_status(Supervisor& s, TaskState& t);

  std::string path_;
  Launcher launcher_;
  LaunchRequest req_;
  std::string strings_;
  std::string orphaned_note_;
  std::unordered_map<uint64_t, TaskState*> live_;  // started, not finished
};

}  // namespace pardo
