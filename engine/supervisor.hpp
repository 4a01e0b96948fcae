// The Supervisor: one native thread that owns every process tree the Python process starts.
//
//  Python threads (GIL released)            supervisor thread: loop() (no GIL; every signal
//  ─────────────────────────────            blocked but SIGCHLD)
//                                           ──────────────────────────────────────────────
//  submit(req, queue) ─► pending_  ─┐
//  kill/terminate/watch ► commands_ ┴─► eventfd ─► epoll_wait ─► on_event, per ready fd:
//                        (under mu_)
//    eventfd  take_requests ─► admit ─┬─► start_task ─► Rung::start ─► a request to pardo's
//             apply(commands)         │   (a limiting queue's     launcher, not waited for.
//                                     │    task takes a permit)   cgroup/pgroup: it clones the
//                                     │                           task as our child and adds its
//                                     │                           pidfd to our epoll set
//                                     │                           (rungs/direct.hpp); or (rss_unread)
//                                     │                           clone3(CLONE_VM) here, not waiting
//                                     │                           for the exec (launch). shepherd:
//                                     │                           it forks a keeper (keepers.hpp)
//                                     └─► queue's held_ (no permit free, or others held)
//    timerfd  fire_timers: deadline (TERM, grace, KILL) · drain end · kill-wait end ·
//             watch record due · poll of an unwatchable task
//    pidfd    tree already gone? ─► permit returned, exited_ (reaped after the refill)
//             else: reap the leader, kill what is left of its tree
//    pipes    stdout/stderr captured (bounded) · stdin fed
//    rung fd  cgroup.events "populated 0" · the keeper's status (started, leader exit,
//             gone, keeper reaped) · the launcher's socket (closed: it died; its replies,
//             read before each sleep, wake us only while a pid is awaited)
//        └─► maybe_complete: leader reaped, tree gone, pipes drained
//                            ─► permit returned, completing_
//  then, once per round, in this order:
//    1 refill      queues that got permits back start held tasks, first taking the
//                  submits that did not wake us (a full queue's submit does not)
//    2 exited_     reaped;  completing_: complete(): last output read, fds closed,
//                  Rung::finish, Handle.result and .done set under mu_ ─► cv_ ─► wait_done
//    3 publish     CompletionQueue::push ─► its cv_ / eventfd ─► pop() (get_many)
//    4 retire      pace_realtime; finished records go; settle_launches;
//                  Rung::before_sleep (the launcher's replies); arm_timerfd
//
//  wait_started(h): h.pid under mu_, then h.launch, whose word the kernel clears when a
//  child started without waiting for its exec has exec'd or exited (CLONE_CHILD_CLEARTID).
//
// - Python threads only queue work under mu_ and wake the loop through one eventfd (a
//   flag spares the write while a wakeup is pending); they wait on cv_ or on a
//   CompletionQueue, never on the loop itself.
// - The loop starts the next tasks before it does the bookkeeping of finished ones (the
//   refill comes before reaping, completing and publishing): a consumer woken first would
//   take the CPU the next task should start on.
// - A started task's child runs beside the loop until its exec (clone3 with CLONE_VM, on a
//   stack of its own; spawn.hpp): its ChildPlan and stack stay alive until the kernel
//   says it is past its exec (settle_launch), even after the task is done (unsettled_).
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
  // Register an fd of the rung's own (not a task's): Rung::on_rung_event when ready.
  bool watch_rung_fd(int fd, uint32_t events);
  // Send sig to the task's tree (SIGKILL: once, with the kill-wait bound armed).
  void signal_tree(TaskState& t, int sig);
  void drop_pidfd(TaskState& t);  // leave epoll and close
  void leader_exited(TaskState& t, int wait_status, int64_t utime_us, int64_t stime_us,
                     int64_t maxrss_kb);
  void tree_gone(TaskState& t);
  void publish_pid(TaskState& t);  // the task's leader pid is known (or never will be)
  // A task started asynchronously (spawn_child_async): true once its child is past its
  // exec or exited, and then its plan is freed and a failure to exec recorded.
  bool settle_launch(TaskState& t);
  void add_timer(TaskState& t, int64_t when_ns, int kind);
  // Complete the task if everything about it is known (see the loop's map above).
  void maybe_complete(TaskState& t);
  // The loop's epoll set (pardo's launcher adds the pidfds of the tasks it starts to it).
  int epoll_fd() const { return epfd_; }
  // True while a Python thread waits in wait_started for a pid not published yet.
  bool pid_wanted() const { return pid_waiters_.load() > 0; }

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
  void complete(TaskState& t);
  void return_permit(TaskState& t);
  TaskState* live_task(uint64_t id);
  static bool eof_pending(const TaskState& t);
  void child_exit_event(TaskState& t);
  void close_fd(TaskState& t, int which);
  void notify();
  void close_own_fds();

  void cancel_held(uint64_t id);
  void settle_unstarted(const std::shared_ptr<Handle>& h, bool cancelled);
  void pace_realtime();
  void settle_launches();
  void retire(std::unique_ptr<TaskState> t);
  void publish();
  void admit(Pending&& p);
  void refill();

  // Set before the thread starts, read-only after.
  Config cfg_;
  std::unique_ptr<Rung> rung_;
  std::string rung_name_, rung_reason_;
  int epfd_ = -1, wakefd_ = -1, timerfd_ = -1, devnull_ = -1;
  bool pipe_nowait_ = false;  // capture pipes are read with RWF_NOWAIT (else non-blocking)
  bool nofile_raised_ = false;
  struct rlimit nofile_orig_ {};
  std::thread thread_;
  std::atomic<bool> stop_{false};   // shutdown() asks the loop to end
  std::atomic<bool> woken_{false};  // a wakeup is pending: notify() need not write again
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int> pid_waiters_{0};  // threads in wait_started whose pid is not known yet

  // mu_ guards what Python threads and the supervisor thread share:
  //   - pending_ and commands_ (queued by submit/command, taken by take_requests);
  //   - in_flight_;
  //   - each Handle's pid, done and result (written by the supervisor thread, read by
  //     wait_started / wait_done / Handle.result once done);
  //   - each limiting CompletionQueue's unsettled_ (submit counts up, the loop down);
  //   - loop_started_ (priority_ is written before it is set and read only after).
  // cv_ announces a Handle's pid or done and the loop's start. Never held while calling
  // into a rung, spawning, or taking a CompletionQueue's own lock.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Pending> pending_;
  std::vector<Command> commands_;
  size_t in_flight_ = 0;
  bool loop_started_ = false;
  std::string priority_;

  // The supervisor thread's own: no lock.
  int base_nice_ = 0;
  bool realtime_ = false, demoted_ = false;
  size_t io_bytes_ = 0;
  int64_t flood_seen_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<TaskState>> tasks_;
  std::vector<uint64_t> finished_;  // completed this round; erased after the event batch
  std::vector<uint64_t> completing_;  // done this round, completed after the refill
  std::vector<uint64_t> exited_;      // leader exited with its tree gone: reaped after the refill
  std::vector<uint64_t> launching_;   // started asynchronously, maybe not past their exec yet
  std::vector<std::unique_ptr<TaskState>> unsettled_;  // finished; their child may still read the plan
  // Limiting queues with tasks running or held; kept alive here until they have none.
  std::unordered_map<CompletionQueue*, std::shared_ptr<CompletionQueue>> limited_;
  std::vector<std::shared_ptr<CompletionQueue>> refill_;  // got a run permit back this round
  // Tasks completed this round, handed to their queues only after the returned permits were
  // refilled: a consumer woken first would take the CPU the next task should start on.
  std::vector<std::pair<std::shared_ptr<CompletionQueue>, std::shared_ptr<Handle>>> publish_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  int64_t armed_for_ = 0;  // the timerfd's expiry (0: not armed)
  int64_t wake_by_ = 0;    // when timerfd_settime was refused: the earliest timer (see loop)
  bool shut_ = false;
};

}  // namespace pardo
