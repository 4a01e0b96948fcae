#include "supervisor.hpp"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <initializer_list>
#include <stdexcept>
#include <system_error>

#include "proc.hpp"
#include "rungs/rung.hpp"
#include "task.hpp"

namespace pardo {

namespace {
std::system_error sys_error(const char* what) {
  return std::system_error(errno, std::generic_category(), what);
}

// Our pipe ends carry no other status flags, so no F_GETFL round trip is needed. 0 or the
// errno: a pipe end left blocking would block this thread on a full or empty pipe.
int set_nonblock(int fd) { return fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ? errno : 0; }

// Capture pipes are left blocking (no fcntl per pipe) and read with RWF_NOWAIT where the
// kernel knows it for pipes (Linux 5.9 on); elsewhere they are made non-blocking.
bool pipes_take_nowait() {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return false;
  char c;
  struct iovec iov{&c, 1};
  bool ok = preadv2(p[0], &iov, 1, -1, RWF_NOWAIT) < 0 && errno == EAGAIN;
  close(p[0]);
  close(p[1]);
  return ok;
}

template <class Pred>
bool wait_on(std::condition_variable& cv, std::unique_lock<std::mutex>& lk, int64_t timeout_ns, Pred pred) {
  if (timeout_ns == 0) return pred();  // a poll: no timed wait at all
  if (timeout_ns < 0) {
    cv.wait(lk, pred);
    return true;
  }
  return cv.wait_for(lk, std::chrono::nanoseconds(timeout_ns), pred);
}
}  // namespace

// ---------------------------------------------------------------- Supervisor: API side

Supervisor::Supervisor(const Config& cfg) : cfg_(cfg) {
  // Each task in flight holds a few fds (pidfd, pipes, its cgroup leaf): the common
  // default soft limit of 1024 would cap a batch at a couple of hundred tasks.
  nofile_raised_ = raise_nofile_limit(&nofile_orig_);
  RungChoice choice = choose_rung(cfg.isolation, cfg.shepherd_path);
  if (!choice.rung) throw std::invalid_argument(choice.error);
  rung_ = std::move(choice.rung);
  rung_name_ = rung_->name();
  rung_reason_ = choice.reason;

  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  timerfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  devnull_ = open("/dev/null", O_RDWR | O_CLOEXEC);
  struct epoll_event ev{};
  ev.events = EPOLLIN;
  const char* failed = nullptr;
  if (epfd_ < 0 || wakefd_ < 0 || timerfd_ < 0 || devnull_ < 0) {
    failed = "supervisor setup";
  } else {
    ev.data.u64 = KEY_WAKE;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev) < 0) failed = "epoll_ctl";
    ev.data.u64 = KEY_TIMER;
    if (!failed && epoll_ctl(epfd_, EPOLL_CTL_ADD, timerfd_, &ev) < 0) failed = "epoll_ctl";
  }
  if (failed) {  // the destructor does not run for a constructor that throws
    std::system_error e = sys_error(failed);
    close_own_fds();
    throw e;
  }
  pipe_nowait_ = pipes_take_nowait();

  // The thread starts with every signal blocked so that process-directed signals
  // (Ctrl-C, SIGTERM) keep going to Python's main thread, except SIGCHLD: each task's
  // exit sends one to this thread (its parent), and a signal its target blocks is queued
  // for the process and wakes some other thread, once per task, to find it ignored.
  // Unblocked here, the kernel drops it at once while its disposition is the default;
  // a handler Python installed still runs (Python's C handler only records the signal),
  // and every system call of this thread copes with EINTR.
  sigset_t all, old;
  sigfillset(&all);
  sigdelset(&all, SIGCHLD);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  thread_ = std::thread([this] { loop(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

Supervisor::~Supervisor() {
  shutdown();
  close_own_fds();
}

void Supervisor::close_own_fds() {
  for (int* fd : {&epfd_, &wakefd_, &timerfd_, &devnull_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

// The eventfd writes here and in shutdown() are unchecked on purpose: an eventfd write
// fails only when its counter would pass 2^64-2, and this one is read at every wakeup.
void Supervisor::notify() {
  if (!woken_.exchange(true)) {
    uint64_t one = 1;
    ssize_t r = write(wakefd_, &one, sizeof one);
    (void)r;
  }
}

std::shared_ptr<Handle> Supervisor::submit(Request&& req, std::shared_ptr<CompletionQueue> queue) {
  auto h = std::make_shared<Handle>();
  h->id = next_id_.fetch_add(1);
  bool wake = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (queue && queue->max_running_ > 0) wake = ++queue->unsettled_ <= queue->max_running_;
    h->queue = std::move(queue);
    pending_.push_back(Pending{h, std::move(req)});
    ++in_flight_;
  }
  if (wake) notify();
  return h;
}

void Supervisor::command(uint64_t id, Op op, const volatile int64_t* record, int64_t ns) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    commands_.push_back(Command{id, op, record, ns});
  }
  notify();
}

int Supervisor::wait_started(Handle& h, int64_t timeout_ns) {
  int pid;
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (h.pid == 0) {
      // A rung may learn pids lazily (rungs/direct.hpp): say that one is awaited.
      ++pid_waiters_;
      lk.unlock();
      notify();
      lk.lock();
      bool ok = wait_on(cv_, lk, timeout_ns, [&] { return h.pid != 0; });
      --pid_waiters_;
      if (!ok) return -2;
    }
    pid = h.pid;
  }
  // Started without waiting for its exec: the kernel says when it got there (or exited).
  if (pid > 0 && h.launch.pending() && !h.launch.wait(timeout_ns)) return -2;
  return pid > 0 && h.launch.stage != STAGE_NONE ? -1 : pid;
}

bool Supervisor::wait_done(Handle& h, int64_t timeout_ns) {
  std::unique_lock<std::mutex> lk(mu_);
  return wait_on(cv_, lk, timeout_ns, [&] { return h.done; });
}

std::string Supervisor::priority() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return loop_started_; });
  return priority_;
}

size_t Supervisor::in_flight() {
  std::lock_guard<std::mutex> lk(mu_);
  return in_flight_;
}

void Supervisor::shutdown() {
  if (thread_.joinable()) {
    stop_.store(true);
    uint64_t one = 1;
    ssize_t r = write(wakefd_, &one, sizeof one);
    (void)r;
    thread_.join();
  }
}

// ---------------------------------------------------------------- the loop

void Supervisor::loop() {
  // Deadlines must fire on time on a saturated machine, so the thread that enforces them
  // asks for the lowest real-time priority where it may (root, CAP_SYS_NICE, RLIMIT_RTPRIO),
  // else for nice -10 (RLIMIT_NICE), else stays as it is. It sleeps in epoll_wait whenever
  // it has nothing to do; its work per event is bounded (see read_stream). Children must
  // not inherit any of this: SCHED_RESET_ON_FORK, and the child restores the nice value
  // this thread started with (ChildPlan::base_nice).
  base_nice_ = own_nice();
  priority_ = raise_own_priority();
  realtime_ = priority_ == "SCHED_FIFO 1";
  {
    std::lock_guard<std::mutex> lk(mu_);
    loop_started_ = true;
  }
  cv_.notify_all();
  pthread_setname_np(pthread_self(), "pardo-supervise");  // readable in top, perf, /proc
  std::vector<struct epoll_event> evs(128);
  int64_t stop_deadline = 0;
  while (true) {
    if (stop_.load() && !shut_) {
      // Shutting down: kill every tree, let them report, bounded.
      shut_ = true;
      stop_deadline = mono_ns() + 5000000000LL;
      drain_requests();
      for (auto& kv : tasks_) {
        TaskState& t = *kv.second;
        if (!t.c.timed_out) t.c.cancelled = true;
        signal_tree(t, SIGKILL);
      }
    }
    if (shut_ && (tasks_.empty() || mono_ns() > stop_deadline)) break;
    int n = epoll_wait(epfd_, evs.data(), static_cast<int>(evs.size()), epoll_timeout_ms());
    if (n < 0) {
      if (errno == EINTR) continue;
      // Cannot happen with our own epoll fd and buffer. Should it, the loop cannot go on:
      // it ends as a shutdown does (every tree killed, every task reported), rather than
      // leaving trees to run unwatched.
      if (shut_) break;
      stop_.store(true);
      continue;
    }
    io_bytes_ = 0;
    for (int i = 0; i < n; ++i) on_event(evs[i].data.u64, evs[i].events);
    if (wake_by_ != 0 && mono_ns() >= wake_by_) {  // the timerfd could not be armed
      wake_by_ = 0;
      fire_timers();
    }
    // The next tasks start first: the bookkeeping of the ones that ended (last reads,
    // closing fds, CPU figures, waking the consumer) is off that path.
    refill();
    for (uint64_t id : exited_) {
      if (TaskState* t = live_task(id)) {
        child_exit_event(*t);
        maybe_complete(*t);
      }
    }
    exited_.clear();
    for (uint64_t id : completing_)
      if (TaskState* t = live_task(id)) complete(*t);
    completing_.clear();
    publish();
    pace_realtime();
    // Tasks completed during this round are erased only now, so that events later in
    // the same batch never see a dangling record.
    for (uint64_t id : finished_) {
      auto it = tasks_.find(id);
      if (it == tasks_.end()) continue;
      retire(std::move(it->second));
      tasks_.erase(it);
    }
    finished_.clear();
    if (!launching_.empty() || !unsettled_.empty()) settle_launches();
    rung_->before_sleep(*this);
    arm_timerfd();
  }
  // Whatever is left could not be killed in time: report it, do not hang.
  for (auto& kv : tasks_) {
    TaskState& t = *kv.second;
    if (!t.handle) continue;
    t.c.note = "still running at supervisor shutdown";
    t.gone = t.leader_done = t.child_reaped = t.drain_expired = true;
    complete(t);
  }
  publish();
  for (auto& kv : tasks_) retire(std::move(kv.second));
  tasks_.clear();
  settle_launches();
  // A child that never got past its exec, even killed, still reads its plan: leave that
  // memory (and its stack) to it rather than free it under its feet.
  for (auto& o : unsettled_) o.release();
  unsettled_.clear();
  rung_->shutdown();
  // Requests that raced with shutdown, or were held by a limiting queue, never start.
  std::vector<Pending> late;
  {
    std::lock_guard<std::mutex> lk(mu_);
    late.swap(pending_);
  }
  for (auto& kv : limited_) {
    for (auto& held : kv.second->held_) late.push_back(Pending{std::move(held.first), std::move(held.second)});
    kv.second->held_.clear();
  }
  limited_.clear();
  refill_.clear();
  for (auto& p : late) settle_unstarted(p.handle, false);
}

// A task that never started: cancelled on request while held, or cut off by shutdown.
void Supervisor::settle_unstarted(const std::shared_ptr<Handle>& h, bool cancelled) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (cancelled) {
      h->result.cancelled = true;
    } else {
      h->result.spawn_stage = STAGE_CLONE;
      h->result.spawn_errno = ECANCELED;
    }
    h->result.pid = -1;
    h->pid = -1;
    h->done = true;
    --in_flight_;
    if (auto q = h->queue.lock())
      if (q->max_running_ > 0) --q->unsettled_;
  }
  cv_.notify_all();
  if (auto q = h->queue.lock()) q->push(h);
}

// A real-time thread that copies a flood of output could starve the machine's other
// work on its CPU. While floods come in (over 1 MiB read in one round), the thread steps
// down to nice -10; it steps back up once they have stopped for 100 ms.
void Supervisor::pace_realtime() {
  if (!realtime_) return;
  if (io_bytes_ > (1u << 20)) {
    flood_seen_ = mono_ns();
    if (!demoted_) demoted_ = set_realtime(false);
  } else if (demoted_ && mono_ns() - flood_seen_ > 100000000) {
    demoted_ = !set_realtime(true);
  }
}

void Supervisor::on_event(uint64_t key, uint32_t events) {
  if (key == KEY_WAKE) {
    uint64_t v;
    ssize_t r = read(wakefd_, &v, sizeof v);
    (void)r;
    woken_.store(false);
    drain_requests();
    return;
  }
  if (key == KEY_TIMER) {
    uint64_t v;
    ssize_t r = read(timerfd_, &v, sizeof v);
    (void)r;
    armed_for_ = 0;
    fire_timers();
    return;
  }
  if (key == KEY_RUNG) {
    rung_->on_rung_event(*this);
    return;
  }
  TaskState* tp = live_task(key >> 4);
  if (!tp) return;
  TaskState& t = *tp;
  int kind = static_cast<int>(key & 15);
  switch (kind) {
    case FD_CHILD:
      if (!t.permit_returned && !t.gone && rung_->tree_gone_at_exit(t)) {
        // The fast case of a short task: start the next one first (refill), and reap this
        // one after that (exited_). Nothing else of its tree is left to kill.
        t.gone = true;
        return_permit(t);
        exited_.push_back(t.id);
        return;
      }
      child_exit_event(t);
      break;
    case FD_OUT:
    case FD_ERR:
      read_stream(t, kind);
      break;
    case FD_IN:
      if (events & (EPOLLERR | EPOLLHUP)) close_fd(t, FD_IN);
      else write_input(t);
      break;
    default:
      rung_->on_event(*this, t, kind);
      break;
  }
  if (t.handle) maybe_complete(t);
}

// The record of a task that has not completed yet, or null.
TaskState* Supervisor::live_task(uint64_t id) {
  auto it = tasks_.find(id);
  return it != tasks_.end() && it->second->handle ? it->second.get() : nullptr;
}

void Supervisor::drain_requests() {
  take_requests();
  refill();
}

void Supervisor::take_requests() {
  std::vector<Pending> reqs;
  std::vector<Command> cmds;
  {
    std::lock_guard<std::mutex> lk(mu_);
    reqs.swap(pending_);
    cmds.swap(commands_);
  }
  for (auto& p : reqs) {
    if (shut_) {
      std::lock_guard<std::mutex> lk(mu_);
      pending_.push_back(std::move(p));  // reported as never started at loop exit
      continue;
    }
    admit(std::move(p));
  }
  for (auto& c : cmds) apply(c);
}

void Supervisor::admit(Pending&& p) {
  std::shared_ptr<CompletionQueue> q = p.handle->queue.lock();
  if (!q || q->max_running_ == 0) {
    start_task(std::move(p));
    return;
  }
  limited_.emplace(q.get(), q);
  // Held tasks go first: a new one must not overtake them when a permit came back this
  // round.
  if (q->running_ >= q->max_running_ || !q->held_.empty()) {
    q->held_.emplace_back(std::move(p.handle), std::move(p.req));
    return;
  }
  ++q->running_;
  start_task(std::move(p));
}

// A task still waiting behind its queue's limit is cancelled without ever starting.
void Supervisor::cancel_held(uint64_t id) {
  for (auto& kv : limited_) {
    auto& held = kv.second->held_;
    for (auto it = held.begin(); it != held.end(); ++it) {
      if (it->first->id != id) continue;
      std::shared_ptr<Handle> h = std::move(it->first);
      held.erase(it);
      settle_unstarted(h, true);
      return;
    }
  }
}

// Start held tasks of queues that got a run permit back. A task that fails to start
// completes at once and returns its permit again; the loop (not recursion) takes care of
// that.
void Supervisor::refill() {
  // Submits to a full queue do not wake this thread (CompletionQueue::unsettled_): take
  // them now that a permit is free.
  if (!refill_.empty()) take_requests();
  while (!refill_.empty()) {
    std::shared_ptr<CompletionQueue> q = std::move(refill_.back());
    refill_.pop_back();
    while (!q->held_.empty() && q->running_ < q->max_running_ && !shut_) {
      Pending p{std::move(q->held_.front().first), std::move(q->held_.front().second)};
      q->held_.pop_front();
      ++q->running_;
      start_task(std::move(p));
    }
    if (q->running_ == 0 && q->held_.empty()) limited_.erase(q.get());
  }
}

void Supervisor::start_task(Pending&& p) {
  auto owned = std::make_unique<TaskState>();
  TaskState& t = *owned;
  t.id = p.handle->id;
  t.handle = std::move(p.handle);
  t.req = std::move(p.req);
  tasks_[t.id] = std::move(owned);
  Request& r = t.req;

  t.plan = std::make_unique<ChildPlan>();
  ChildPlan& plan = *t.plan;
  plan.argv = std::move(r.argv);
  plan.has_env = r.has_env;
  plan.env = std::move(r.env);
  std::string path_var;
  if (plan.has_env) {
    for (auto& e : plan.env)
      if (e.rfind("PATH=", 0) == 0) path_var = e.substr(5);
  } else if (const char* pv = getenv("PATH")) {
    path_var = pv;
  }
  // The program to exec: `executable` when given (argv[0] is then only what the program
  // sees as its name), else argv[0]; searched in PATH when it has no slash.
  const std::string& program = !r.executable.empty() ? r.executable
                               : plan.argv.empty()   ? std::string()
                                                     : plan.argv[0];
  plan.exec_paths = exec_candidates(program, path_var);
  plan.cwd = r.cwd;
  if (!r.cpus.empty()) {
    plan.has_cpus = true;
    CPU_ZERO(&plan.cpus);
    for (int c : r.cpus)
      if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &plan.cpus);
  }
  plan.has_nice = r.has_nice;
  plan.nice = r.nice;
  plan.base_nice = base_nice_;  // tasks get this thread's original niceness, not its boost
  // What the fork gives: SCHED_RESET_ON_FORK (set whenever this thread raised itself)
  // makes a real-time or negative-nice parent's child SCHED_OTHER at nice 0.
  plan.forked_nice = priority_ == "normal" ? base_nice_ : 0;
  plan.rlimit_as = r.memory_limit;
  plan.restore_nofile = nofile_raised_;  // programs start with the limit this process had
  plan.nofile = nofile_orig_;

  // Standard streams. Child-side fds are closed right after the spawn.
  std::vector<int> child_side;
  int devnull = devnull_;
  int in_src = devnull;
  // A pipe that cannot be made (no fds left) fails the task: running it without its
  // input, or with its output thrown away, would lose data without a word. So do fds that
  // cannot be set up as the child needs them.
  int fds_err = 0;
  if (r.has_input) {
    int p2[2];
    if (pipe2(p2, O_CLOEXEC) == 0) {
      in_src = p2[0];
      child_side.push_back(p2[0]);
      t.fd_in = p2[1];
      if (int e = set_nonblock(t.fd_in)) fds_err = e;
    } else {
      fds_err = errno;
    }
  }
  const bool hold_write_ends = rung_->knows_tree_end();
  auto stream_src = [&](const StreamSpec& s, int std_fd, int* parent_end, int* our_write_end) -> int {
    switch (s.mode) {
      case StreamSpec::CAPTURE: {
        int p2[2];
        if (pipe2(p2, O_CLOEXEC) < 0) {
          fds_err = errno;
          return devnull;
        }
        *parent_end = p2[0];
        if (!pipe_nowait_)
          if (int e = set_nonblock(p2[0])) fds_err = e;
        if (hold_write_ends)
          *our_write_end = p2[1];
        else
          child_side.push_back(p2[1]);
        return p2[1];
      }
      case StreamSpec::FD: return s.fd;
      case StreamSpec::INHERIT: return std_fd;
      default: return devnull;
    }
  };
  int out_src = stream_src(r.out, 1, &t.fd_out, &t.wfd_out);
  int err_src = r.err.mode == StreamSpec::TO_STDOUT ? out_src : stream_src(r.err, 2, &t.fd_err, &t.wfd_err);
  plan.fds = {{0, in_src}, {1, out_src}, {2, err_src}};
  for (auto& m : r.extra_fds) plan.fds.push_back(m);
  std::vector<int> temps;
  if (int e = normalize_fds(plan.fds, &temps))
    if (!fds_err) fds_err = e;

  // The deadline counts from the moment the process is created, not from when this
  // thread gets the CPU back after the exec (which can be late on a busy machine).
  t.start_mono = mono_ns();
  t.c.start_wall_ns = wall_ns();
  SpawnOutcome o;
  if (fds_err) {
    o.stage = STAGE_FDS;
    o.err = fds_err;
  } else {
    o = rung_->start(*this, t, plan);
  }

  if (plan.stack) {
    // Started without waiting for its exec: the child still reads the plan and reports
    // into the handle until settle_launch() sees it past its exec.
    t.launch_handle = t.handle;
    launching_.push_back(t.id);
  } else {
    t.plan.reset();
  }

  for (int fd : child_side)
    if (fd >= 0) close(fd);
  for (int fd : temps) close(fd);
  if (r.out.mode == StreamSpec::FD && r.out.fd >= 0) close(r.out.fd);
  if (r.err.mode == StreamSpec::FD && r.err.fd >= 0) close(r.err.fd);
  for (auto& m : r.extra_fds) close(m.second);
  r.extra_fds.clear();

  if (o.stage != STAGE_NONE) {
    t.c.spawn_stage = o.stage;
    t.c.spawn_errno = o.err;
    t.gone = t.leader_done = t.child_reaped = t.drain_expired = true;
    complete(t);
    return;
  }
  if (t.c.pid > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    t.handle->pid = t.c.pid;
  }
  if (t.c.pid > 0) cv_.notify_all();
  // One-shot: the exit is reported once; a registration that outlives our close (a copy
  // of the pidfd in a forked child) then stays disarmed instead of firing forever.
  // No pidfd (Linux < 5.3): only the shepherd rung runs there, and it learns of its
  // child's exit from the end of its status pipe.
  if (t.pidfd >= 0) watch_fd(t, t.pidfd, FD_CHILD, EPOLLIN | EPOLLONESHOT);
  if (t.fd_out >= 0) watch_fd(t, t.fd_out, FD_OUT, EPOLLIN);
  if (t.fd_err >= 0) watch_fd(t, t.fd_err, FD_ERR, EPOLLIN);
  if (t.fd_in >= 0) watch_fd(t, t.fd_in, FD_IN, EPOLLOUT);
  if (r.timeout_ns >= 0) add_timer(t, t.start_mono + r.timeout_ns, T_DEADLINE);
}

void Supervisor::apply(const Command& c) {
  auto it = tasks_.find(c.id);
  if (it == tasks_.end() && (c.op == OP_KILL || c.op == OP_TERM)) {
    cancel_held(c.id);
    return;
  }
  if (it == tasks_.end() || !it->second->handle) return;
  TaskState& t = *it->second;
  switch (c.op) {
    case OP_KILL:
      if (!t.c.timed_out) t.c.cancelled = true;
      signal_tree(t, SIGKILL);
      break;
    case OP_TERM:
      if (!t.c.timed_out) t.c.cancelled = true;
      if (t.req.kill_grace_ns > 0 && !t.kill_sent) {
        signal_tree(t, SIGTERM);
        add_timer(t, mono_ns() + t.req.kill_grace_ns, T_GRACE_END);
      } else {
        signal_tree(t, SIGKILL);
      }
      break;
    case OP_WATCH:
      t.watch_record = c.record;
      t.watch_idle_ns = c.ns > 0 ? c.ns : 1000000;
      ++t.watch_gen;
      timers_.push(Timer{mono_ns(), t.id, T_WATCH, t.watch_gen});
      break;
    case OP_UNWATCH:
      t.watch_record = nullptr;
      ++t.watch_gen;
      break;
  }
  maybe_complete(t);
}

}  // namespace pardo
