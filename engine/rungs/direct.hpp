// The cgroup and pgroup rungs' tasks, started through pardo's launcher (pardo-shepherd
// --launcher, engine/shepherd/launcher.cpp) so that their max_rss is their own.
//
//   supervisor ──LaunchRequest (LAUNCH_DIRECT) + fds──► launcher ──clone3(CLONE_PARENT | CLONE_VM
//     ▲  ▲  ▲                                            │ │       | CLONE_PIDFD [| CLONE_INTO_
//     │  │  └── STARTED (pid) + pidfd, read when needed ◄┘ │       CGROUP]) on a stack of its own
//     │  └──── our epoll set: the pidfd, keyed as ours ◄───┘          │
//     │  └──── FAILED (stage, errno), before its exit 127 ◄────────── task, before its exec
//     └─── wait4, kill: the task is our own child ◄────────────────── task
//
// Why not clone the task from this process, as the fastest start would: until its exec a
// child shares (CLONE_VM) or copies (fork) the Python process's address space, and the
// kernel's exec folds that space's peak RSS into the new program's (signal->maxrss), which
// is what wait4 reports: /bin/true started from a Python process holding 500 MiB read 513
// MiB. The launcher's address space is a few pages. With CLONE_PARENT the task is still
// this process's child, so its exit, reaping, rusage and signals are exactly as if we had
// cloned it; only its pid comes a moment later, in the launcher's reply.
//
// What a round trip would cost is wake-ups, and on a VM a wake-up of another process costs
// far more than the system calls around it: so nobody waits for anybody. The request goes
// out and the loop moves on; the launcher answers without waiting for the exec; and it
// adds the task's pidfd to our epoll set itself (we gave it the set), keyed as if we had,
// so the task's exit wakes us once, as any task's does, and the reply need not. Replies
// are read when the loop is awake anyway (before it sleeps, before a task's exit is
// handled); the socket wakes us only when the launcher is gone, or while a pid is awaited
// (a signal kept for a task not yet known by pid, a Python thread asking for Task.pid).
// Should the launcher die, the tasks it had not answered for fail with stage "launch"
// (those it had are our children and run on), and the next task starts a new one.
#pragma once

#include <sys/types.h>

#include <deque>
#include <string>
#include <unordered_map>

#include "proc.hpp"
#include "rungs/rung.hpp"
#include "shepherd/protocol.hpp"

namespace pardo {

class DirectLauncher {
 public:
  // `rung` is told of a signal that was kept for a task until its pid came; `guardian_fd`
  // (-1: none) is the pgroup guardian's pipe, which the launcher's tasks write their pid
  // into before their exec.
  DirectLauncher(std::string shepherd_path, Rung& rung, int guardian_fd = -1)
      : path_(std::move(shepherd_path)), rung_(rung), guardian_fd_(guardian_fd) {}
  ~DirectLauncher() { stop(); }

  // Send the task's request. On success t.child_pid and t.pidfd stay -1 until the reply.
  SpawnOutcome start(Supervisor& s, TaskState& t, const ChildPlan& plan, int cgroup_fd);
  // The launcher's socket woke us: replies we asked for, or its end.
  void on_event(Supervisor& s);
  // Read what replies there are, without waiting.
  void drain(Supervisor& s);
  // Wait (bounded) until the task's STARTED reply is in: its exit is being handled.
  void await(Supervisor& s, TaskState& t);
  // A task of ours exited with wait status `st`: an exit 127 may be a task that could not
  // exec, whose FAILED reply (written before its exit) is read now.
  void explain_exit(Supervisor& s, int st);
  // End of a loop round: read the replies, and have the socket wake us only when a pid
  // is awaited.
  void before_sleep(Supervisor& s);
  // True while the task's STARTED reply has not come: its pid is not known yet.
  bool awaiting(const TaskState& t) const;
  // Send `sig` to the tree once its pid is known (SIGKILL outranks SIGTERM).
  void defer_signal(const TaskState& t, int sig);
  // The task is being finished: if its reply is still to come, wait for it (bounded), and
  // kill and reap a task that exists after all. It is forgotten.
  void settle(Supervisor& s, TaskState& t);
  // Close the socket (the launcher exits at EOF) and reap the launcher.
  void stop();

 private:
  struct Entry {
    TaskState* t;
    int sig;        // to send once the pid is known
    bool awaiting;  // no STARTED reply yet
  };
  bool ensure_launcher(Supervisor& s, SpawnOutcome* fail);
  void encode(TaskState& t, const ChildPlan& plan, bool cgroup);
  int send_request(const int* fds, int nfds);
  bool read_replies();  // into in_ and fds_; false at EOF or on an error
  void handle_replies(Supervisor& s);
  void resolve(Supervisor& s, TaskState& t, const LaunchReply& r, int pidfd, int sig);
  void launcher_died(Supervisor& s);
  void forget_launcher();
  void set_wake_on_replies(Supervisor& s, bool on);

  std::string path_;
  Rung& rung_;
  int guardian_fd_;
  pid_t pid_ = -1;
  int pidfd_ = -1;
  int launcher_status_ = 0;
  int sock_ = -1;
  bool dead_ = false;             // EOF seen: the launcher is gone
  bool wake_on_replies_ = false;  // the socket is watched for EPOLLIN too
  LaunchRequest req_;
  IgnoredSignals ignored_;  // what each task starts with ignored
  std::string strings_;
  std::string in_;       // reply bytes read, not yet handled
  std::deque<int> fds_;  // the pidfds that came with them, in order (-1: lost)
  std::unordered_map<uint64_t, Entry> tasks_;  // started through us, not settled
  size_t awaiting_ = 0;  // of which without a STARTED reply
  size_t deferred_ = 0;  // of which with a signal kept
};

}  // namespace pardo
