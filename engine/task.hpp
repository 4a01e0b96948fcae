// The supervisor thread's record of one task in flight (internal to the engine).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "supervisor.hpp"

namespace pardo {

struct Leaf;

// epoll keys are (task id << 4) | kind; these kinds name the fd. Task ids start at 1, so
// task keys are >= 16 and the two keys of the supervisor's own fds stay apart.
constexpr uint64_t KEY_WAKE = 1, KEY_TIMER = 2, KEY_RUNG = 3;
inline uint64_t key_of(uint64_t id, int kind) { return (id << 4) | static_cast<uint64_t>(kind); }

enum FdKind : int {
  FD_CHILD = 1,   // pidfd of our direct child (leader, or the shepherd)
  FD_OUT = 2,
  FD_ERR = 3,
  FD_IN = 4,
  FD_EVENTS = 5,  // cgroup.events of the task's leaf
  FD_STATUS = 6,  // shepherd -> supervisor messages
};

// Timer kinds (their values mean nothing outside the heap).
enum TimerKind : int {
  T_DEADLINE = 1,   // the task's timeout
  T_GRACE_END,      // SIGTERM was sent kill_grace ago: SIGKILL
  T_DRAIN_END,      // the tree is gone; its pipes stay open no longer
  T_KILL_WAIT_END,  // SIGKILL was sent kill_wait ago and the tree is not gone
  T_WATCH,          // a pool worker's watch record is due to be read
  T_POLL,           // an unwatchable task is looked at (Supervisor::unwatchable)
};

struct TaskState {
  uint64_t id = 0;
  std::shared_ptr<Handle> handle;
  Request req;
  Completion c;

  pid_t child_pid = -1;  // our direct child: the leader, or the shepherd
  int pidfd = -1;
  int fd_out = -1, fd_err = -1, fd_in = -1;
  int wfd_out = -1, wfd_err = -1;  // our copies of the capture pipes' write ends (see Rung)
  size_t in_off = 0;

  int64_t start_mono = 0;
  bool leader_done = false;
  bool child_reaped = false;
  bool gone = false;          // the whole tree is gone
  bool kill_sent = false;     // SIGKILL sent to the tree
  bool drain_expired = false;
  bool completing = false;    // done; completed after this round's refill (see loop)
  bool permit_returned = false;  // its run permit went back to its limiting queue
  bool polled = false;        // a watch of it was refused: looked at on a timer instead
  uint64_t timer_gen = 1;     // bumps invalidate pending timers of this task

  // watchdog (pool workers)
  const volatile int64_t* watch_record = nullptr;
  int64_t watch_idle_ns = 0;
  uint64_t watch_gen = 0;

  // rung state
  Leaf* leaf = nullptr;
  int ctl_fd = -1, status_fd = -1;
  std::string status_buf;
  bool events_watched = false;
  bool got_started = false;
  bool kept_keeper = false;  // shepherd rung: served by a kept keeper (status_fd is its socket)

  // What the child reads until its exec. Kept (with the handle it reports into) while
  // an asynchronous start is pending: see Supervisor::settle_launches.
  std::unique_ptr<ChildPlan> plan;
  std::shared_ptr<Handle> launch_handle;
};

}  // namespace pardo
