// DirectLauncher (rungs/direct.hpp): the cgroup and pgroup rungs' tasks, cloned by
// pardo's launcher as this process's own children.
#include "rungs/direct.hpp"
#include "rungs/launch_request.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.hpp"
#include "raw/rawmsg.hpp"
#include "supervisor.hpp"
#include "task.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace pardo {
namespace {

// How long a request may wait for room in the launcher's socket, and a finishing task for
// its reply, before the launcher is taken for hung (and replaced): it answers each request
// as soon as the task has exec'd.
constexpr int kLauncherTimeoutMs = 5000;

}  // namespace

SpawnOutcome DirectLauncher::start(Supervisor& s, TaskState& t, const ChildPlan& plan, int cgroup_fd) {
  SpawnOutcome o;
  if (plan.fds.size() > static_cast<size_t>(kLaunchMaxFds)) {
    o.stage = STAGE_FDS;
    o.err = EMFILE;
    return o;
  }
  encode(t, plan, cgroup_fd >= 0);
  int fds[kLaunchMaxFds + 1];
  int n = 0;
  for (auto& m : plan.fds) fds[n++] = m.second;
  if (cgroup_fd >= 0) fds[n++] = cgroup_fd;
  // A launcher that died since the last task is replaced, once.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!ensure_launcher(s, &o)) return o;
    int err = send_request(fds, n);
    if (err == 0) break;
    launcher_died(s);
    o.stage = STAGE_HELPER;
    o.err = err;
    if (err != EPIPE && err != ECONNRESET) return o;
    o.stage = STAGE_NONE;
  }
  if (o.stage != STAGE_NONE) return o;
  t.child_pid = -1;  // until the reply
  t.pidfd = -1;
  tasks_[t.id] = Entry{&t, 0, true};
  ++awaiting_;
  return o;
}

bool DirectLauncher::awaiting(const TaskState& t) const {
  if (awaiting_ == 0) return false;
  auto it = tasks_.find(t.id);
  return it != tasks_.end() && it->second.awaiting;
}

void DirectLauncher::defer_signal(const TaskState& t, int sig) {
  auto it = tasks_.find(t.id);
  if (it == tasks_.end() || !it->second.awaiting) return;
  if (it->second.sig == 0) ++deferred_;
  if (it->second.sig != SIGKILL) it->second.sig = sig;
}

void DirectLauncher::on_event(Supervisor& s) { drain(s); }

void DirectLauncher::drain(Supervisor& s) {
  if (sock_ < 0) return;
  read_replies();
  handle_replies(s);
  if (dead_) launcher_died(s);
}

void DirectLauncher::await(Supervisor& s, TaskState& t) {
  if (!awaiting(t)) return;
  drain(s);
  int64_t until = mono_ns() + int64_t{kLauncherTimeoutMs} * 1000000;
  while (awaiting(t) && sock_ >= 0) {
    int64_t left_ms = (until - mono_ns()) / 1000000;
    if (left_ms <= 0) break;
    struct pollfd p{sock_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left_ms)) < 0 && errno != EINTR) break;
    drain(s);
  }
}

void DirectLauncher::explain_exit(Supervisor& s, int st) {
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127) drain(s);
}

void DirectLauncher::before_sleep(Supervisor& s) {
  if (awaiting_ > 0) drain(s);
  set_wake_on_replies(s, awaiting_ > 0 && (deferred_ > 0 || s.pid_wanted()));
}

void DirectLauncher::set_wake_on_replies(Supervisor& s, bool on) {
  if (sock_ < 0 || on == wake_on_replies_) return;
  struct epoll_event ev{};
  ev.events = on ? EPOLLRDHUP | EPOLLIN : EPOLLRDHUP;
  ev.data.u64 = KEY_RUNG;
  if (epoll_ctl(s.epoll_fd(), EPOLL_CTL_MOD, sock_, &ev) == 0) wake_on_replies_ = on;
}

void DirectLauncher::settle(Supervisor& s, TaskState& t) {
  await(s, t);
  auto it = tasks_.find(t.id);
  if (it != tasks_.end()) {
    if (it->second.awaiting) --awaiting_;  // no reply: the launcher is hung
    if (it->second.awaiting && it->second.sig) --deferred_;
    tasks_.erase(it);
  }
  if (t.child_pid > 0 && !t.child_reaped) {
    // It exists after all, and its record is going: it must not outlive it.
    kill(t.child_pid, SIGKILL);
    siginfo_t si;
    while (waitid(P_PID, t.child_pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
    }
    rung_.on_child_exit(s, t);
  }
}

bool DirectLauncher::ensure_launcher(Supervisor& s, SpawnOutcome* fail) {
  if (sock_ >= 0) return true;
  fail->stage = STAGE_HELPER;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    fail->err = errno;
    return false;
  }
  // Started from this (the supervisor) thread: the tasks it clones with CLONE_PARENT get
  // this thread as their parent, and so die of PDEATHSIG with it. It dies with it too.
  std::vector<std::pair<int, int>> more = {{kLaunchEpollFd, s.epoll_fd()}};
  if (guardian_fd_ >= 0) more.push_back({kLaunchGuardianFd, guardian_fd_});
  SpawnOutcome o = start_helper(path_, {"--launcher"}, sv[1], SIGKILL, more);
  close(sv[1]);
  if (o.stage != STAGE_NONE) {
    close(sv[0]);
    if (o.stage != STAGE_EXEC) fail->stage = o.stage;
    fail->err = o.err;
    return false;
  }
  pid_ = o.pid;
  pidfd_ = o.pidfd;
  // Its replies are read when we are awake anyway (before_sleep): the socket wakes us
  // only at its end, or while a pid is awaited (set_wake_on_replies).
  wake_on_replies_ = false;
  if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0 || !s.watch_rung_fd(sv[0], EPOLLRDHUP)) {
    fail->err = errno;
    close(sv[0]);
    forget_launcher();
    return false;
  }
  sock_ = sv[0];
  dead_ = false;
  fail->stage = STAGE_NONE;
  return true;
}

// The request's header and strings, in req_ and strings_.
void DirectLauncher::encode(TaskState& t, const ChildPlan& plan, bool cgroup) {
  encode_launch(plan, ignored_, &req_, &strings_);
  LaunchRequest& h = req_;
  h.flags |= LAUNCH_DIRECT | LAUNCH_WATCH;
  if (cgroup) h.flags |= LAUNCH_CGROUP;
  if (guardian_fd_ >= 0) h.flags |= LAUNCH_TELL_GUARDIAN;
  h.task = t.id;
  h.watch_key = key_of(t.id, FD_CHILD);
}

// Send req_ and strings_ with `fds`; 0 or the errno. Anything but 0 leaves the stream
// unusable (part of a request may have gone). The socket never blocks this thread: while
// it is full, the launcher's replies are read meanwhile (it may be waiting to write one).
int DirectLauncher::send_request(const int* fds, int nfds) {
  if (strings_.size() > kLaunchMaxSize) return E2BIG;
  alignas(struct cmsghdr) char cbuf[fds_space(kLaunchMaxFds + 1)];
  struct iovec iov[2] = {{&req_, sizeof req_}, {&strings_[0], strings_.size()}};
  struct msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = 2;
  attach_fds(&mh, cbuf, fds, static_cast<size_t>(nfds));
  size_t total = sizeof req_ + strings_.size(), sent = 0;
  int64_t until = 0;
  while (sent < total) {
    ssize_t n = sendmsg(sock_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      if (!until) until = mono_ns() + int64_t{kLauncherTimeoutMs} * 1000000;
      int64_t left_ms = (until - mono_ns()) / 1000000;
      if (left_ms <= 0) return ETIMEDOUT;
      struct pollfd p{sock_, POLLOUT | POLLIN, 0};
      poll(&p, 1, static_cast<int>(left_ms));
      if ((p.revents & POLLIN) && !read_replies()) return EPIPE;
      continue;
    }
    if (n < 0) return errno;
    sent += static_cast<size_t>(n);
    advance_sent(&mh, static_cast<size_t>(n));
  }
  return 0;
}

// Whole replies only: each was one write, so a read of a multiple of their size ends on a
// boundary. A read stops after the one reply that carries an fd.
bool DirectLauncher::read_replies() {
  if (sock_ < 0 || dead_) return false;
  alignas(LaunchReply) char buf[64 * sizeof(LaunchReply)];
  alignas(struct cmsghdr) char cbuf[fds_space(1)];
  while (true) {
    struct iovec iov{buf, sizeof buf};
    struct msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t n = recvmsg(sock_, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n > 0) {
      in_.append(buf, static_cast<size_t>(n));
      const int* got;
      if (received_fds(&mh, &got) > 0) {
        fds_.push_back(got[0]);
      } else if (mh.msg_flags & MSG_CTRUNC) {
        fds_.push_back(-1);  // no fd left for it here: the reply's pidfd is lost
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return true;
    dead_ = true;  // EOF (or an error on a socket only we and it hold): it is gone
    return false;
  }
}

void DirectLauncher::handle_replies(Supervisor& s) {
  size_t off = 0;
  while (in_.size() - off >= sizeof(LaunchReply)) {
    LaunchReply r;
    memcpy(&r, in_.data() + off, sizeof r);
    off += sizeof r;
    int pidfd = -1;
    if (r.kind == LAUNCH_REPLY_STARTED && (r.flags & REPLY_PIDFD) && !fds_.empty()) {
      pidfd = fds_.front();
      fds_.pop_front();
    }
    auto it = tasks_.find(r.task);
    if (r.kind == LAUNCH_REPLY_FAILED) {
      // Its exit, which follows, is handled as any exit; this says it never ran.
      if (it == tasks_.end()) continue;
      TaskState& t = *it->second.t;
      if (t.c.spawn_stage == STAGE_NONE) {
        t.c.spawn_stage = r.stage;
        t.c.spawn_errno = r.err;
      }
      t.c.pid = -1;
      if (!it->second.awaiting) s.publish_pid(t);
      continue;
    }
    if (it == tasks_.end() || !it->second.awaiting) {
      // A task no longer waited for (settle gave up on it): it must not run unwatched.
      if (pidfd >= 0) close(pidfd);
      if (r.pid > 0 && it == tasks_.end()) {
        kill(r.pid, SIGKILL);
        while (waitpid(r.pid, nullptr, 0) < 0 && errno == EINTR) {
        }
      }
      continue;
    }
    Entry e = it->second;
    it->second.awaiting = false;
    --awaiting_;
    if (e.sig) --deferred_;
    resolve(s, *e.t, r, pidfd, e.sig);
  }
  in_.erase(0, off);
}

void DirectLauncher::resolve(Supervisor& s, TaskState& t, const LaunchReply& r, int pidfd, int sig) {
  if (r.pid <= 0) {
    // No process was made: the task never started.
    t.c.spawn_stage = r.stage ? r.stage : STAGE_CLONE;
    t.c.spawn_errno = r.err;
    t.c.pid = -1;
    s.publish_pid(t);
    t.gone = t.leader_done = t.child_reaped = t.drain_expired = true;
    s.maybe_complete(t);
    return;
  }
  t.child_pid = r.pid;
  if (t.c.spawn_stage == STAGE_NONE) t.c.pid = r.pid;  // else its FAILED reply came first
  s.publish_pid(t);
  // Our unreaped child: its pid cannot be reused, so a pidfd opened here is its own too.
  if (pidfd < 0) {
    long fd = syscall(SYS_pidfd_open, r.pid, 0);
    pidfd = fd >= 0 ? static_cast<int>(fd) : -1;
  }
  if (pidfd >= 0) {
    t.pidfd = pidfd;
    // Already in our epoll set (the launcher added it) unless it says otherwise.
    if (!(r.flags & REPLY_WATCHED) && !s.watch_fd(t, t.pidfd, FD_CHILD, EPOLLIN | EPOLLONESHOT))
      return;  // killed, and looked at on a timer (Supervisor::unwatchable)
    if (sig) rung_.signal_tree(s, t, sig);
    return;
  }
  // Out of fds: it cannot be watched, so it is killed and reaped now.
  if (t.c.spawn_stage == STAGE_NONE) {
    t.c.spawn_stage = STAGE_SUPERVISE;
    t.c.spawn_errno = errno;
    t.c.note = std::string("pidfd_open failed (") + strerror(errno) +
               "): pardo could not watch the task, so it killed it";
  }
  kill(r.pid, SIGKILL);
  siginfo_t si;
  while (waitid(P_PID, r.pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
  }
  rung_.on_child_exit(s, t);
  s.maybe_complete(t);
}

// The launcher is gone (EOF on its socket), or cannot be trusted (a request could not be
// sent whole): make sure it is gone, reap it, and fail the tasks it had not answered for.
// Those it had answered for are our own children and run on.
void DirectLauncher::launcher_died(Supervisor& s) {
  if (sock_ < 0) return;
  // What it said before it went still counts.
  read_replies();
  handle_replies(s);
  s.unwatch_fd(sock_);
  close(sock_);
  sock_ = -1;
  dead_ = false;
  wake_on_replies_ = false;
  in_.clear();
  for (int fd : fds_)
    if (fd >= 0) close(fd);
  fds_.clear();
  pid_t was = pid_;
  forget_launcher();
  int st = launcher_status_;
  std::string how = WIFSIGNALED(st) ? "was killed by signal " + std::to_string(WTERMSIG(st))
                                    : "exited with status " + std::to_string(WEXITSTATUS(st));
  std::string note = "pardo's launcher process (pardo-shepherd --launcher, pid " +
                     std::to_string(was) + ") " + how + " before it said whether it started the task";
  for (auto it = tasks_.begin(); it != tasks_.end();) {
    if (!it->second.awaiting) {
      ++it;
      continue;
    }
    TaskState& t = *it->second.t;
    it = tasks_.erase(it);
    t.c.spawn_stage = STAGE_LAUNCH;
    t.c.spawn_errno = ECHILD;
    t.c.pid = -1;
    if (t.c.note.empty()) t.c.note = note;
    s.publish_pid(t);
    // Whatever it may have started of the task goes (the cgroup rung: its leaf).
    rung_.signal_tree(s, t, SIGKILL);
    t.gone = t.leader_done = t.child_reaped = t.drain_expired = true;
    s.maybe_complete(t);
  }
  awaiting_ = deferred_ = 0;
}

void DirectLauncher::stop() {
  if (pid_ <= 0) return;
  if (sock_ >= 0) close(sock_);  // EOF: it exits at once
  sock_ = -1;
  for (int fd : fds_)
    if (fd >= 0) close(fd);
  fds_.clear();
  if (pidfd_ >= 0) {
    struct pollfd p{pidfd_, POLLIN, 0};
    poll(&p, 1, 2000);
  }
  forget_launcher();
}

// Kill (if need be) and reap the launcher, our child.
void DirectLauncher::forget_launcher() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);  // unreaped: the pid is still its own
  while (waitpid(pid_, &launcher_status_, 0) < 0 && errno == EINTR) {
  }
  if (pidfd_ >= 0) close(pidfd_);
  pidfd_ = -1;
  pid_ = -1;
}

}  // namespace pardo
