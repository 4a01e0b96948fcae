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
//   (isolation.hpp): cgroup, shepherd or process group.
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

#include "spawn.hpp"

namespace pardo {

struct StreamSpec {
  enum Mode { CAPTURE, FD, DEVNULL, INHERIT, TO_STDOUT };
  Mode mode = CAPTURE;
  int fd = -1;  // FD mode: owned by the request (a dup made at submit)
};

struct Request {
  std::vector<std::string> argv;
  std::string executable;  // "" : argv[0]
  bool has_env = false;
  std::vector<std::string> env;
  std::string cwd;
  bool has_input = false;
  std::string input;
  StreamSpec out, err;
  size_t max_output = 16u << 20;
  std::vector<std::pair<int, int>> extra_fds;  // (target, source); sources owned by the request
  int64_t timeout_ns = -1;
  int64_t kill_grace_ns = 2000000000;
  std::vector<int> cpus;
  bool has_nice = false;
  int nice = 0;
  long long memory_limit = 0;
  bool linger = false;
};

struct Completion {
  int pid = -1;
  int spawn_stage = 0, spawn_errno = 0;  // != 0: could not start
  bool exited = false;
  int exit_code = 0;
  int term_signal = 0;
  bool timed_out = false, cancelled = false;
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
  int64_t start_wall_ns = 0, duration_ns = 0;
  int64_t cpu_user_us = 0, cpu_sys_us = 0, max_rss_kb = 0;
  uint64_t watch_seq = 0;
  std::string note;  // something the user should know (e.g. a tree that would not die)
};

class CompletionQueue;

// Python's view of one task. pid and done change under the supervisor's mutex.
struct Handle {
  uint64_t id = 0;
  int pid = 0;  // 0: not started yet; -1: could not start
  // A task started without waiting for its exec: pid is known before whether it started
  // (wait_started() waits for `launch` to settle, without the supervisor thread).
  LaunchReport launch;
  bool done = false;
  Completion result;
  // Weak: a queue holds its finished handles, so a strong pointer back would be a cycle
  // that keeps a dropped queue (and its eventfd) alive forever.
  std::weak_ptr<CompletionQueue> queue;
};

// Finished handles, in completion order, for consumers that run many tasks at once.
//
// With max_running > 0 the queue is also a limiter: at most that many of its tasks run at
// once, and the supervisor thread starts the next held one itself the moment one ends, so
// a batch runs at full speed without a round trip through Python per task.
class CompletionQueue {
 public:
  explicit CompletionQueue(int max_running = 0);
  ~CompletionQueue();
  int max_running() const { return max_running_; }
  int fd();  // readable while the queue is non-empty (made on first use)
  void push(std::shared_ptr<Handle> h);
  // Up to max handles; waits up to timeout_ns (-1: forever) until at least min_items are
  // there, or (linger_ns >= 0) until the oldest of those there has waited linger_ns.
  // Returns nothing if neither happened in time.
  std::vector<std::shared_ptr<Handle>> pop(size_t max, int64_t timeout_ns, size_t min_items = 1,
                                           int64_t linger_ns = -1);
  size_t size();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Handle>> items_;
  // min_items of each thread waiting in pop(): a push wakes them only once the smallest
  // is met, so a consumer that asked for a batch sleeps through the tasks before it.
  std::multiset<size_t> waiting_;
  int lingering_ = 0;  // waiters with a linger: the first item of a batch wakes them too
  std::chrono::steady_clock::time_point first_at_;  // when the oldest item came
  int efd_ = -1;
  const int max_running_;

  // Supervisor thread only: how many of this queue's tasks run, and those waiting to.
  friend class Supervisor;
  int running_ = 0;
  std::deque<std::pair<std::shared_ptr<Handle>, Request>> held_;
  // Under the supervisor's mutex: tasks submitted and not yet done with their slot. While
  // it exceeds max_running, a submit need not wake the supervisor: the new task could only
  // wait, and the next slot to free up makes the supervisor take it (see refill).
  int unsettled_ = 0;
};

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
  void command(uint64_t id, Op op, const volatile int64_t* slot = nullptr, int64_t ns = 0);
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
  void watch_fd(TaskState& t, int fd, int kind, uint32_t events);
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
  const Config& config() const { return cfg_; }

 private:
  struct Pending {
    std::shared_ptr<Handle> handle;
    Request req;
  };
  struct Command {
    uint64_t id;
    Op op;
    const volatile int64_t* slot;
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
  bool timer_live(const Timer& tm);
  void deadline(TaskState& t);
  void signal_tree(TaskState& t, int sig);
  void maybe_complete(TaskState& t);
  void complete(TaskState& t);
  void free_slot(TaskState& t);
  TaskState* live_task(uint64_t id);
  static bool eof_pending(const TaskState& t);
  void child_exit_event(TaskState& t);
  void close_fd(TaskState& t, int which);
  void notify();

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
  std::vector<std::shared_ptr<CompletionQueue>> refill_;  // a slot freed this round
  // Tasks completed this round, handed to their queues only after the freed slots were
  // refilled: a consumer woken first would take the CPU the next task should start on.
  std::vector<std::pair<std::shared_ptr<CompletionQueue>, std::shared_ptr<Handle>>> publish_;
  void publish();
  void admit(Pending&& p);
  void refill();
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  int64_t armed_for_ = 0;
  bool shut_ = false;
};

}  // namespace pardo
