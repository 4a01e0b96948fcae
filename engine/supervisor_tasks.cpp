// The supervisor thread's handling of a task once it has started: its events (output,
// input, its child's exit, what its rung reports), its timers (deadline, grace, drain,
// kill-wait, watch), and its completion. The loop itself, the API side and the start of
// a task are in supervisor.cpp.
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "fault.hpp"
#include "proc.hpp"
#include "rungs/cgroup_tree.hpp"
#include "rungs/rung.hpp"
#include "supervisor.hpp"
#include "task.hpp"

namespace pardo {

// ---------------------------------------------------------------- output and input

void Supervisor::read_stream(TaskState& t, int which) {
  int fd = which == FD_OUT ? t.fd_out : t.fd_err;
  std::string& buf = which == FD_OUT ? t.c.out : t.c.err;
  bool& trunc = which == FD_OUT ? t.c.out_truncated : t.c.err_truncated;
  static thread_local char chunk[65536];
  // A bounded number of reads per wakeup keeps one flooding task from starving the
  // others; epoll is level-triggered, so the rest comes on the next round. The final
  // read of a finished tree takes all a pipe can hold (no writer is left to add more).
  const int rounds = t.gone ? 64 : 16;
  for (int i = 0; i < rounds; ++i) {
    struct iovec iov{chunk, sizeof chunk};
    ssize_t n = pipe_nowait_ ? preadv2(fd, &iov, 1, -1, RWF_NOWAIT) : read(fd, chunk, sizeof chunk);
    if (n > 0) {
      size_t room = buf.size() < t.req.max_output ? t.req.max_output - buf.size() : 0;
      size_t take = static_cast<size_t>(n) < room ? static_cast<size_t>(n) : room;
      buf.append(chunk, take);
      if (take < static_cast<size_t>(n)) trunc = true;
      io_bytes_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    close_fd(t, which);  // EOF or error
    return;
  }
}

void Supervisor::write_input(TaskState& t) {
  const std::string& in = t.req.input;
  while (t.in_off < in.size()) {
    ssize_t n = write(t.fd_in, in.data() + t.in_off, in.size() - t.in_off);
    if (n > 0) {
      t.in_off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EAGAIN) return;
    if (n < 0 && errno == EINTR) continue;
    break;  // EPIPE: the task does not read its input; that is its business
  }
  close_fd(t, FD_IN);
}

void Supervisor::close_fd(TaskState& t, int which) {
  int* fd = which == FD_OUT ? &t.fd_out : which == FD_ERR ? &t.fd_err : &t.fd_in;
  int* wfd = which == FD_OUT ? &t.wfd_out : which == FD_ERR ? &t.wfd_err : nullptr;
  // Remove it from the epoll set explicitly: close() alone does not when another reference
  // to the file exists, and a child started but not yet through the close-on-exec step
  // of its exec holds copies of all our fds. A stale registration would make epoll_wait
  // return at once, over and over; and even for a pipe whose write end we held, the
  // child dropping its copies at exec would wake this thread once per end (a pipe's
  // release wakes its readers without saying why), for nothing.
  if (*fd >= 0) unwatch_fd(*fd);
  if (wfd && *wfd >= 0) {
    close(*wfd);
    *wfd = -1;
  }
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

// ---------------------------------------------------------------- rung callbacks

bool Supervisor::watch_fd(TaskState& t, int fd, int kind, uint32_t events) {
  struct epoll_event ev{};
  ev.events = events;
  ev.data.u64 = key_of(t.id, kind);
  if (!fault::hit(fault::EPOLL_ADD) && epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0) return true;
  unwatchable(t, errno);
  return false;
}

// Unchecked on purpose: EPOLL_CTL_DEL fails only for an fd that is not in the set (ENOENT:
// its registration was refused, or a one-shot one already removed) or not open (EBADF),
// and then there is no registration left to remove. It allocates nothing, so it cannot
// fail for want of memory.
void Supervisor::unwatch_fd(int fd) { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

bool Supervisor::watch_rung_fd(int fd, uint32_t events) {
  struct epoll_event ev{};
  ev.events = events;
  ev.data.u64 = KEY_RUNG;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

// A registration the kernel refused: ENOSPC once fs.epoll.max_user_watches is reached,
// ENOMEM. Without it the task's exit, output or end would never be seen, and it would
// wait forever (its deadline kills it, but its end still goes unseen). So the task fails
// with the reason (status "error"), its tree is killed, and from now on a short timer
// looks at what its events would have said (poll_task) until it is gone; the kill-wait
// bound still applies. Each task fails alone: the others keep their registrations.
void Supervisor::unwatchable(TaskState& t, int err) {
  if (!t.handle) return;
  if (t.c.spawn_stage == STAGE_NONE) {  // the first failure is the one to report
    t.c.spawn_stage = STAGE_SUPERVISE;
    t.c.spawn_errno = err;
    t.c.note = std::string("epoll_ctl failed (") + strerror(err) +
               "): pardo could not watch the task, so it killed it";
  }
  if (!t.polled) {
    t.polled = true;
    add_timer(t, mono_ns() + kPollNs, T_POLL);
  }
  signal_tree(t, SIGKILL);
}

// What the events of an unwatchable task would have said, looked up directly.
void Supervisor::poll_task(TaskState& t) {
  if (t.fd_in >= 0) close_fd(t, FD_IN);  // it is being killed: its input no longer matters
  if (t.fd_out >= 0) read_stream(t, FD_OUT);
  if (t.fd_err >= 0) read_stream(t, FD_ERR);
  rung_->on_event(*this, t, FD_STATUS);
  rung_->on_event(*this, t, FD_EVENTS);
  if (!t.child_reaped && t.pidfd >= 0) child_exit_event(t);
}

void Supervisor::drop_pidfd(TaskState& t) {
  if (t.pidfd < 0) return;
  if (!t.child_reaped) unwatch_fd(t.pidfd);  // still armed: remove it (see close_fd)
  close(t.pidfd);  // reaped: its one-shot registration has fired and is disarmed
  t.pidfd = -1;
}

void Supervisor::child_exit_event(TaskState& t) {
  rung_->on_child_exit(*this, t);
  if (!t.child_reaped && t.pidfd >= 0) {
    // Not reaped after all (not waitable yet): re-arm the one-shot registration.
    struct epoll_event ev{};
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = key_of(t.id, FD_CHILD);
    // A pidfd that pardo's launcher registered (rungs/direct.hpp) is known to epoll by the
    // launcher's fd number, not ours: re-armed, it is ours from then on.
    if (!t.polled && (fault::hit(fault::EPOLL_MOD) ||
                      (epoll_ctl(epfd_, EPOLL_CTL_MOD, t.pidfd, &ev) < 0 &&
                       (errno != ENOENT || epoll_ctl(epfd_, EPOLL_CTL_ADD, t.pidfd, &ev) < 0))))
      unwatchable(t, errno);
  }
}

void Supervisor::leader_exited(TaskState& t, int st, int64_t utime_us, int64_t stime_us,
                               int64_t maxrss_kb) {
  if (t.leader_done) return;
  t.leader_done = true;
  settle_launch(t);  // an exit clears the launch word first, so this always settles
  if (WIFEXITED(st)) {
    t.c.exited = true;
    t.c.exit_code = WEXITSTATUS(st);
  } else if (WIFSIGNALED(st)) {
    t.c.term_signal = WTERMSIG(st);
  }
  t.c.cpu_user_us = utime_us;
  t.c.cpu_sys_us = stime_us;
  t.c.max_rss_kb = maxrss_kb;
  // The leader is gone: whatever it left behind goes too, unless the caller asked to
  // wait for the tree (linger), in which case the deadline still bounds it.
  if (!t.req.linger && !t.gone) signal_tree(t, SIGKILL);
}

bool Supervisor::settle_launch(TaskState& t) {
  if (!t.plan) return true;
  if (!finish_launch(*t.plan)) return false;
  t.plan.reset();
  std::shared_ptr<Handle> h = std::move(t.launch_handle);
  if (h && h->launch.stage != STAGE_NONE) {
    // It exited before its exec could succeed: the task never started.
    t.c.spawn_stage = h->launch.stage;
    t.c.spawn_errno = h->launch.err;
    t.c.pid = -1;
    publish_pid(t);
  }
  return true;
}

// Once per loop round: children started asynchronously that are now past their exec give
// their plan and stack back. Cheap: the list holds the tasks started since the last round.
void Supervisor::settle_launches() {
  size_t k = 0;
  for (uint64_t id : launching_) {
    auto it = tasks_.find(id);
    if (it != tasks_.end() && !settle_launch(*it->second)) launching_[k++] = id;
  }
  launching_.resize(k);
  k = 0;
  for (auto& o : unsettled_)
    if (!settle_launch(*o)) unsettled_[k++] = std::move(o);
  unsettled_.resize(k);
}

// A finished task's record goes, unless its child may still be reading the plan (it was
// killed, or gave up on, before its exec): that one waits in unsettled_.
void Supervisor::retire(std::unique_ptr<TaskState> t) {
  if (!settle_launch(*t)) unsettled_.push_back(std::move(t));
}

void Supervisor::publish_pid(TaskState& t) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (t.handle) t.handle->pid = t.c.pid > 0 ? t.c.pid : -1;
  }
  cv_.notify_all();
}

void Supervisor::tree_gone(TaskState& t) {
  if (t.gone) return;
  t.gone = true;
  // Pipes whose write end we hold have no other writer left: what they hold is all there
  // is, and complete() reads it. Others may still be open elsewhere: wait for their EOF,
  // for a while.
  if (eof_pending(t)) add_timer(t, mono_ns() + cfg_.drain_ns, T_DRAIN_END);
}

void Supervisor::signal_tree(TaskState& t, int sig) {
  if (t.gone) return;
  if (sig == SIGKILL) {
    if (t.kill_sent) return;
    t.kill_sent = true;
    add_timer(t, mono_ns() + cfg_.kill_wait_ns, T_KILL_WAIT_END);
  }
  rung_->signal_tree(*this, t, sig);
}

// A capture pipe still open whose write end we did not keep: its end-of-file is still to
// come (or the drain timer ends the wait).
bool Supervisor::eof_pending(const TaskState& t) {
  return (t.fd_out >= 0 && t.wfd_out < 0) || (t.fd_err >= 0 && t.wfd_err < 0);
}

void Supervisor::maybe_complete(TaskState& t) {
  if (!t.handle || t.completing || !t.leader_done || !t.gone || !t.child_reaped) return;
  if (eof_pending(t) && !t.drain_expired) return;
  t.completing = true;
  return_permit(t);
  completing_.push_back(t.id);
}

void Supervisor::return_permit(TaskState& t) {
  if (t.permit_returned) return;
  t.permit_returned = true;
  auto q = t.handle->queue.lock();
  if (!q || q->max_running_ == 0) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    --q->unsettled_;
  }
  if (limited_.count(q.get())) {
    --q->running_;
    refill_.push_back(std::move(q));
  }
}

void Supervisor::complete(TaskState& t) {
  return_permit(t);
  ++t.timer_gen;
  t.watch_record = nullptr;
  drop_pidfd(t);
  // The last of the output, from pipes with no writer left but ours.
  if (t.gone && t.wfd_out >= 0 && t.fd_out >= 0) read_stream(t, FD_OUT);
  if (t.gone && t.wfd_err >= 0 && t.fd_err >= 0) read_stream(t, FD_ERR);
  close_fd(t, FD_OUT);
  close_fd(t, FD_ERR);
  close_fd(t, FD_IN);
  rung_->finish(*this, t);
  t.c.duration_ns = mono_ns() - t.start_mono;
  std::shared_ptr<Handle> h = std::move(t.handle);  // also marks the record for erasure
  finished_.push_back(t.id);
  {
    std::lock_guard<std::mutex> lk(mu_);
    h->result = std::move(t.c);
    if (h->pid == 0) h->pid = h->result.pid > 0 ? h->result.pid : -1;
    h->done = true;
    --in_flight_;
  }
  cv_.notify_all();
  if (auto q = h->queue.lock()) publish_.emplace_back(std::move(q), std::move(h));
}

void Supervisor::publish() {
  for (auto& qh : publish_) qh.first->push(std::move(qh.second));
  publish_.clear();
}

// ---------------------------------------------------------------- timers

void Supervisor::add_timer(TaskState& t, int64_t when_ns, int kind) {
  timers_.push(Timer{when_ns, t.id, kind, t.timer_gen});
}

bool Supervisor::timer_live(const Timer& tm) {
  auto it = tasks_.find(tm.id);
  return it != tasks_.end() && it->second->handle &&
         (tm.kind == T_WATCH ? tm.gen == it->second->watch_gen : tm.gen == it->second->timer_gen);
}

void Supervisor::arm_timerfd() {
  // Stale entries leave the heap lazily; when they pile up (long deadlines of tasks that
  // finished early), rebuild it with the live ones only.
  if (timers_.size() > 4 * tasks_.size() + 1024) {
    std::vector<Timer> live;
    while (!timers_.empty()) {
      if (timer_live(timers_.top())) live.push_back(timers_.top());
      timers_.pop();
    }
    for (auto& tm : live) timers_.push(tm);
  }
  while (!timers_.empty()) {
    if (timer_live(timers_.top())) break;
    timers_.pop();
  }
  if (timers_.empty()) {  // a disarmed timerfd costs nothing; a stale one is harmless
    wake_by_ = 0;
    return;
  }
  int64_t when = timers_.top().when;
  // An armed timer that is earlier than needed only costs a spurious wakeup (which
  // re-arms); re-arming on every change would cost a system call per task.
  if (armed_for_ != 0 && armed_for_ <= when) return;
  struct itimerspec its{};
  if (when <= 0) when = 1;
  its.it_value.tv_sec = when / 1000000000LL;
  its.it_value.tv_nsec = when % 1000000000LL;
  if (!fault::hit(fault::TIMERFD_SETTIME) && timerfd_settime(timerfd_, TFD_TIMER_ABSTIME, &its, nullptr) == 0) {
    armed_for_ = when;
    wake_by_ = 0;
  } else {
    // Refused (it has no reason to be: the time is valid and absolute). Every deadline
    // still has to fire, so until a later round arms the timerfd, epoll_wait's own
    // timeout stands in for it (loop), at millisecond grain. Failing the tasks instead
    // would punish them for the supervisor's trouble.
    armed_for_ = 0;
    wake_by_ = when;
  }
}

int Supervisor::epoll_timeout_ms() const {
  if (shut_) return 50;
  if (wake_by_ == 0) return -1;
  int64_t left = wake_by_ - mono_ns();
  if (left <= 0) return 0;
  int64_t ms = (left + 999999) / 1000000;  // rounded up: waking early would only spin
  return ms > 1000000 ? 1000000 : static_cast<int>(ms);
}

void Supervisor::deadline(TaskState& t) {
  t.c.timed_out = true;
  t.c.cancelled = false;
  if (t.req.kill_grace_ns > 0 && !t.kill_sent) {
    signal_tree(t, SIGTERM);
    add_timer(t, mono_ns() + t.req.kill_grace_ns, T_GRACE_END);
  } else {
    signal_tree(t, SIGKILL);
  }
}

void Supervisor::fire_timers() {
  int64_t now = mono_ns();
  while (!timers_.empty() && timers_.top().when <= now) {
    Timer tm = timers_.top();
    timers_.pop();
    TaskState* tp = live_task(tm.id);
    if (!tp) continue;
    TaskState& t = *tp;
    if (tm.kind == T_WATCH ? tm.gen != t.watch_gen : tm.gen != t.timer_gen) continue;
    switch (tm.kind) {
      case T_DEADLINE:
        if (!t.gone) deadline(t);
        break;
      case T_GRACE_END:
        signal_tree(t, SIGKILL);
        break;
      case T_DRAIN_END:
        t.drain_expired = true;
        close_fd(t, FD_OUT);
        close_fd(t, FD_ERR);
        break;
      case T_KILL_WAIT_END:
        if (!t.gone) {
          t.c.note = "the process tree did not die within " +
                     std::to_string(cfg_.kill_wait_ns / 1000000000LL) +
                     " s of SIGKILL (a process stuck in the kernel?)";
          if (t.leaf) t.leaf->quarantined = true;
          t.gone = t.leader_done = t.drain_expired = true;
          t.child_reaped = true;
        }
        break;
      case T_WATCH: {
        if (!t.watch_record) break;
        int64_t d = __atomic_load_n(const_cast<const int64_t*>(t.watch_record), __ATOMIC_ACQUIRE);
        if (d != 0 && now >= d) {
          t.c.watch_seq = static_cast<uint64_t>(
              __atomic_load_n(const_cast<const int64_t*>(t.watch_record + 1), __ATOMIC_ACQUIRE));
          t.watch_record = nullptr;
          deadline(t);
        } else {
          timers_.push(Timer{d != 0 ? d : now + t.watch_idle_ns, t.id, T_WATCH, t.watch_gen});
        }
        break;
      }
      case T_POLL:
        poll_task(t);
        if (t.handle) add_timer(t, mono_ns() + kPollNs, T_POLL);
        break;
    }
    maybe_complete(t);
    now = mono_ns();
  }
}

}  // namespace pardo
