// The Supervisor: one native thread that owns every process tree the Python process starts.
//
//   Python threads                      supervisor thread (all signals blocked, no GIL)
//   ──────────────                      ────────────────────────────────────────────────
//   submit(Request) ──► pending_ ──► eventfd ──► epoll_wait ──► spawn (clone3 into rung)
//   signal/watch    ──► commands_ ─┘                 │
//                                                   ├─ pidfd readable   → reap leader, kill rest of tree
//                                                   ├─ stdout/stderr    → capture (bounded) or drop
//                                                   ├─ stdin writable   → feed input
//                                                   ├─ cgroup.events    → tree gone (cgroup rung)
//                                                   ├─ shepherd status  → leader status (shepherd rung)
//                                                   └─ timerfd          → deadline: TERM tree, grace, KILL;
//                                                                         watch slots; output drain bound
//   Handle.wait / CompletionQueue.pop ◄── complete(): tree gone + pipes drained
//
// - Requests and commands are queued under mu_ and signalled through one eventfd.
// - Deadlines live in a min-heap of (time, task, kind, generation); one timerfd is armed at
//   the earliest. Stale entries are skipped by generation, never searched for.
// - How a tree is contained, signalled and known to be gone is the Rung's business
//   (rungs/rung.hpp): cgroup, shepherd or process group.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <queue>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "completion_queue.hpp"
#include "request.hpp"

namespace pardo {

struct TaskState;
class Rung;

class Supervisor {
 public:
  struct Config {
    std::string isolation = "auto";  // auto | cgroup | shepherd | pgroup
    std::string shepherd_path;
    int64_t drain_ns = 500000000;      // how long pipes may stay open once the tree is gone
    int64_t kill_wait_ns = 10000000000;  // how long a killed tree may take to die
  };

  explicit Supervisor(const Config& cfg);  // throws std::system_error / std::runtime_error
  ~Supervisor();

  std::shared_ptr<Handle> submit(Request&& req, std::shared_ptr<CompletionQueue> queue);
  enum Op { OP_KILL, OP_TERM, OP_WATCH, OP_UNWATCH };
  void command(uint64_t id, Op op, const volatile int64_t* record = nullptr, int64_t ns = 0);
  // Block until the handle's process exists (or failed); returns its pid or -1. -2: timeout.
  int wait_started(Handle& h, int64_t timeout_ns);
  // Block until done; false on timeout.
  bool wait_done(Handle& h, int64_t timeout_ns);
  // Kill every tree, wait for them, remove what the rung created, stop the thread.
  void shutdown();

  const std::string& rung_name() const { return rung_name_; }
  // How the supervisor thread is scheduled ("SCHED_FIFO 1", "nice -10" or "normal").
  std::string priority();
  const std::string& rung_reason() const { return rung_reason_; }
  size_t in_flight();

  // --- used by the rungs (supervisor thread only) ---
  // Register fd for the task's events; false when the kernel refused (the task then
  // fails: see unwatchable).
  bool watch_fd(TaskState& t, int fd, int kind, uint32_t events);
  void unwatch_fd(int fd);
  void drop_pidfd(TaskState& t);  // leave epoll and close
  void leader_exited(TaskState& t, int wait_status, int64_t utime_us, int64_t stime_us,
                     int64_t maxrss_kb);
  void tree_gone(TaskState& t);
  void publish_pid(TaskState& t);  // the task's leader pid is known (or never will be)
  // A task started asynchronously (spawn_child_async): true once its child is past its
  // exec or exited, and then its plan is freed and a failure to exec recorded.
  bool settle_launch(TaskState& t);
  void add_timer(TaskState& t, int64_t when_ns, int kind);

 private:
  struct Pending {
    std::shared_ptr<Handle> handle;
    Request req;
  };
  struct Command {
    uint64_t id;
    Op op;
    const volatile int64_t* record;
    int64_t ns;
  };
  struct Timer {
    int64_t when;
    uint64_t id;
    int kind;
    uint64_t gen;
    bool operator>(const Timer& o) const { return when > o.when; }
  };

  void loop();
  void drain_requests();
  void take_requests();
  void start_task(Pending&& p);
  void apply(const Command& c);
  void on_event(uint64_t key, uint32_t events);
  void read_stream(TaskState& t, int which);
  void write_input(TaskState& t);
  void fire_timers();
  void arm_timerfd();
  int epoll_timeout_ms() const;
  void unwatchable(TaskState& t, int err);
  void poll_task(TaskState& t);
  static constexpr int64_t kPollNs = 10000000;  // how often an unwatchable task is looked at
  bool timer_live(const Timer& tm);
  void deadline(TaskState& t);
  void signal_tree(TaskState& t, int sig);
  void maybe_complete(TaskState& t);
  void complete(TaskState& t);
  void return_permit(TaskState& t);
  TaskState* live_task(uint64_t id);
  static bool eof_pending(const TaskState& t);
  void child_exit_event(TaskState& t);
  void close_fd(TaskState& t, int which);
  void notify();
  void close_own_fds();

  Config cfg_;
  std::unique_ptr<Rung> rung_;
  std::string rung_name_, rung_reason_;
  int epfd_ = -1, wakefd_ = -1, timerfd_ = -1, devnull_ = -1;
  bool pipe_nowait_ = false;  // capture pipes are read with RWF_NOWAIT (else non-blocking)
  bool nofile_raised_ = false;
  struct rlimit nofile_orig_ {};
  int base_nice_ = 0;
  std::string priority_;
  bool loop_started_ = false;
  void cancel_held(uint64_t id);
  void settle_unstarted(const std::shared_ptr<Handle>& h, bool cancelled);
  void pace_realtime();
  bool realtime_ = false, demoted_ = false;
  size_t io_bytes_ = 0;
  int64_t flood_seen_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> woken_{false};

  std::mutex mu_;  // guards pending_, commands_, handle pid/done, in_flight_
  std::condition_variable cv_;
  std::vector<Pending> pending_;
  std::vector<Command> commands_;
  std::atomic<uint64_t> next_id_{1};
  size_t in_flight_ = 0;

  // supervisor thread only
  std::unordered_map<uint64_t, std::unique_ptr<TaskState>> tasks_;
  std::vector<uint64_t> finished_;  // completed this round; erased after the event batch
  std::vector<uint64_t> completing_;  // done this round, completed after the refill
  std::vector<uint64_t> exited_;      // leader exited with its tree gone: reaped after the refill
  std::vector<uint64_t> launching_;   // started asynchronously, maybe not past their exec yet
  std::vector<std::unique_ptr<TaskState>> unsettled_;  // finished; their child may still read the plan
  void settle_launches();
  void retire(std::unique_ptr<TaskState> t);
  // Limiting queues with tasks running or held; kept alive here until they have none.
  std::unordered_map<CompletionQueue*, std::shared_ptr<CompletionQueue>> limited_;
  std::vector<std::shared_ptr<CompletionQueue>> refill_;  // got a run permit back this round
  // Tasks completed this round, handed to their queues only after the returned permits were
  // refilled: a consumer woken first would take the CPU the next task should start on.
  std::vector<std::pair<std::shared_ptr<CompletionQueue>, std::shared_ptr<Handle>>> publish_;
  void publish();
  void admit(Pending&& p);
  void refill();
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  int64_t armed_for_ = 0;  // the timerfd's expiry (0: not armed)
  int64_t wake_by_ = 0;    // when timerfd_settime was refused: the earliest timer (see loop)
  bool shut_ = false;
};

}  // namespace pardo
