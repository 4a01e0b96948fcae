// The shepherd rung's tasks, started through pardo's launcher and its keepers. One
// launcher per supervisor (pardo-shepherd --launcher, engine/shepherd/launcher.cpp),
// started at the first task and again after it dies, forks keepers: processes that start
// a task in a session of its own, report on it (shepherd/protocol.hpp) and kill and reap
// its whole tree. A keeper is the launcher's child, not ours.
//
// Kept keepers (rungs/kept_keepers.cpp; engine/shepherd/keeper_pool.cpp) serve task after
// task, each over a SOCK_SEQPACKET socket of its own that carries the task, its fds, the
// T/K control bytes and the reports; they are asked of the launcher only when none is
// idle, and a keeper that had to signal a tree retires rather than be reused:
//
//   supervisor ──kKeeperMagic + socket──► launcher ──fork──► kept keeper ──vfork-style──► task
//        ▲  └──────────── task + fds, T/K ──────────────────►    │
//        └──────────────── STARTED?, DONE / TREE_GONE ───────────┘
//
// A task whose request exceeds what a kept keeper takes (kKeptMaxMessage: a huge
// environment or argv) gets a keeper of its own (engine/shepherd/keeper.cpp), forked by the
// launcher for it, which reports on a status pipe and obeys a control pipe; the launcher
// reaps it and says how it ended (KEEPER_EXIT) as the last word on the same pipe:
//
//   supervisor ──request + fds──► launcher ──fork──► keeper ──vfork-style──► task
//        ▲                                             │
//        └──────────── status pipe ◄───────────────────┘ ◄── control pipe (T/K bytes)
//
// The task's max_rss is its own: a child of the Python process shares (or copies) its
// address space until its exec, and the kernel carries that space's peak into the task's
// rusage; the launcher and its keepers link no libc and their address space is a few
// pages. (The cgroup and pgroup rungs' tasks are started by the same launcher, without a
// keeper: rungs/direct.hpp.)
//
// The launcher's death is seen on its socket (its only other holder): every task in
// flight then fails with the reason (its keeper, orphaned, kills its tree and says so),
// and the next task starts a new launcher.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "proc.hpp"
#include "rungs/rung.hpp"
#include "shepherd/protocol.hpp"

namespace pardo {

class KeeperRung : public Rung {
 public:
  explicit KeeperRung(std::string helper);
  ~KeeperRung() override;

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
  void announce_start(Supervisor& s, TaskState& t, int32_t pid);
  bool task_message(Supervisor& s, TaskState& t, const ShepherdMsg& m);
  void read_status(Supervisor& s, TaskState& t);

  // Kept keepers (rungs/kept_keepers.cpp): keepers that serve task after task, each over
  // a socket of its own, so that a task costs no fork of a keeper and no request to the
  // launcher. The per-task keeper above stays for what they do not take.
  bool start_kept(Supervisor& s, TaskState& t, const ChildPlan& plan, SpawnOutcome* o);
  int new_kept(Supervisor& s, SpawnOutcome* o);
  void read_kept(Supervisor& s, TaskState& t);
  void signal_kept(TaskState& t, int sig);
  void release_kept(Supervisor& s, TaskState& t, bool reusable);
  void drop_idle();

  std::string path_;
  Launcher launcher_;
  LaunchRequest req_;
  std::string strings_;
  std::string orphaned_note_;
  IgnoredSignals ignored_;  // what each task starts with ignored
  std::unordered_map<uint64_t, TaskState*> live_;  // started, not finished
  // The sockets of idle kept keepers, the most recently used last (its pages are the
  // likeliest still in cache); at most kMaxIdleKept.
  std::vector<int> idle_;
};

}  // namespace pardo
