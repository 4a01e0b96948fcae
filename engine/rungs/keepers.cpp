// KeeperRung (rungs/keepers.hpp): tasks started through the launcher and its keepers.
#include "rungs/keepers.hpp"
#include "rungs/launch_request.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.hpp"
#include "raw/rawmsg.hpp"
#include "shepherd/shepherd.hpp"
#include "supervisor.hpp"
#include "task.hpp"


namespace pardo {
namespace {

// How long a request may wait for room in the launcher's socket before the launcher is
// taken for hung (and replaced): it reads requests as fast as it can fork.
constexpr int kSendTimeoutSec = 5;

}  // namespace

KeeperRung::KeeperRung(std::string helper) : path_(std::move(helper)) {}

KeeperRung::~KeeperRung() {
  stop_launcher();
}

SpawnOutcome KeeperRung::start(Supervisor& s, TaskState& t, ChildPlan& plan) {
  SpawnOutcome o;
  if (plan.fds.size() > static_cast<size_t>(kLaunchMaxFds)) {
    o.stage = STAGE_FDS;
    o.err = EMFILE;
    return o;
  }
  encode(t, plan);
  if (start_kept(s, t, plan, &o)) return o;
  int ctl[2], st[2];
  if (pipe2(ctl, O_CLOEXEC) < 0) {
    o.stage = STAGE_CLONE;
    o.err = errno;
    return o;
  }
  if (pipe2(st, O_CLOEXEC) < 0) {
    o.stage = STAGE_CLONE;
    o.err = errno;
    close(ctl[0]);
    close(ctl[1]);
    return o;
  }
  // Our ends never block this thread (each end of a pipe is an open file of its own, so
  // the keeper's ends stay blocking).
  if (fcntl(st[0], F_SETFL, O_NONBLOCK) < 0 || fcntl(ctl[1], F_SETFL, O_NONBLOCK) < 0) {
    o.stage = STAGE_FDS;
    o.err = errno;
  } else {
    std::vector<int> fds;
    for (auto& m : plan.fds) fds.push_back(m.second);
    fds.push_back(st[1]);
    fds.push_back(ctl[0]);
    // A launcher that died since the last task is replaced, once.
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (!ensure_launcher(s, &o)) break;
      int err = send_request(fds);
      if (err == 0) break;
      launcher_died(s);
      o.stage = STAGE_HELPER;
      o.err = err;
      if (err != EPIPE && err != ECONNRESET) break;
      o.stage = STAGE_NONE;
    }
  }
  close(st[1]);
  close(ctl[0]);
  if (o.stage != STAGE_NONE) {
    close(st[0]);
    close(ctl[1]);
    return o;
  }
  t.status_fd = st[0];
  t.ctl_fd = ctl[1];
  t.child_pid = -1;  // the keeper's pid, once it says it (it is not our child)
  t.pidfd = -1;      // the end of the keeper comes on the status pipe
  live_[t.id] = &t;
  s.watch_fd(t, t.status_fd, FD_STATUS, EPOLLIN);
  return o;
}

void KeeperRung::on_event(Supervisor& s, TaskState& t, int kind) {
  if (kind != FD_STATUS) return;
  if (t.kept_keeper)
    read_kept(s, t);
  else
    read_status(s, t);
}

void KeeperRung::signal_tree(Supervisor&, TaskState& t, int sig) {
  if (t.ctl_fd < 0 || t.child_reaped) return;
  if (t.kept_keeper) return signal_kept(t, sig);
  // After the leader's exit the keeper kills the rest by itself (unless lingering).
  if (sig == SIGKILL && t.leader_done && !t.req.linger) return;
  char c = sig == SIGKILL ? CTL_KILL : CTL_TERM;
  ssize_t r;
  do {
    r = write(t.ctl_fd, &c, 1);
  } while (r < 0 && errno == EINTR);
  // The byte could not go: EAGAIN (the keeper has 64 KiB of them unread) or an error
  // that should not happen. SIGTERM says to the keeper what a K byte says: kill the
  // whole tree, harsher than a T byte but better than a signal not sent. Its pid is
  // its own until it is reaped, and then its pipe says so (child_reaped).
  // EPIPE needs nothing: the keeper is exiting, and its end comes on the status pipe.
  if (r != 1 && errno != EPIPE && t.child_pid > 0) kill(t.child_pid, SIGTERM);
}

void KeeperRung::finish(Supervisor& s, TaskState& t) {
  live_.erase(t.id);
  // A kept keeper still attached to its task at the end was not heard to finish it:
  // never reused (its socket's end makes it kill what it holds and exit).
  if (t.kept_keeper && t.status_fd >= 0) release_kept(s, t, false);
  if (t.status_fd >= 0) {
    s.unwatch_fd(t.status_fd);
    close(t.status_fd);
    t.status_fd = -1;
  }
  if (t.ctl_fd >= 0) {
    close(t.ctl_fd);
    t.ctl_fd = -1;
  }
}

// Start the launcher unless it runs. False, with *fail's stage and errno, when it
// cannot: the helper program cannot be run (STAGE_HELPER), or the spawn's own steps
// failed (e.g. STAGE_FDS where no fd can be closed).
bool KeeperRung::ensure_launcher(Supervisor& s, SpawnOutcome* fail) {
  if (launcher_.sock >= 0) return true;
  fail->stage = STAGE_HELPER;
  int* err = &fail->err;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    *err = errno;
    return false;
  }
  // It dies with this thread; each keeper then dies of its own PDEATHSIG, killing its
  // tree (and sees its control pipe close when this process goes).
  SpawnOutcome o = start_helper(path_, {"--launcher"}, sv[1], SIGKILL);
  close(sv[1]);
  if (o.stage != STAGE_NONE) {
    close(sv[0]);
    // Our helper could not be exec'd: say so, rather than blame the task's program.
    if (o.stage != STAGE_EXEC) fail->stage = o.stage;
    *err = o.err;
    return false;
  }
  struct timeval tv{kSendTimeoutSec, 0};
  setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  launcher_ = Launcher{o.pid, o.pidfd, sv[0]};
  // The launcher never writes: the socket becomes readable only when it is gone.
  if (!s.watch_rung_fd(sv[0], EPOLLIN | EPOLLRDHUP)) {
    *err = errno;
    stop_launcher();
    return false;
  }
  fail->stage = STAGE_NONE;
  return true;
}

// The request's header and strings, in req_ and strings_.
void KeeperRung::encode(TaskState& t, const ChildPlan& plan) {
  encode_launch(plan, ignored_, &req_, &strings_);
  if (t.req.linger) req_.flags |= LAUNCH_LINGER;
}

// Send req_ and strings_ with `fds`; 0 or the errno. Anything but 0 leaves the stream
// unusable (part of a request may have gone): the caller replaces the launcher.
int KeeperRung::send_request(const std::vector<int>& fds) {
  if (strings_.size() > kLaunchMaxSize) return E2BIG;
  alignas(struct cmsghdr) char cbuf[fds_space(kLaunchMaxFds + 3)];
  struct iovec iov[2] = {{&req_, sizeof req_}, {strings_.data(), strings_.size()}};
  struct msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = 2;
  attach_fds(&mh, cbuf, fds.data(), fds.size());
  size_t total = sizeof req_ + strings_.size(), sent = 0;
  while (sent < total) {
    ssize_t n = sendmsg(launcher_.sock, &mh, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN ? ETIMEDOUT : errno;
    sent += static_cast<size_t>(n);
    advance_sent(&mh, static_cast<size_t>(n));
  }
  return 0;
}

// The launcher is gone (its socket closed), or cannot be trusted (a request could not be
// sent whole): make sure it is gone, reap it, and fail the tasks in flight with why.
void KeeperRung::launcher_died(Supervisor& s) {
  if (launcher_.sock < 0) return;
  s.unwatch_fd(launcher_.sock);
  close(launcher_.sock);
  launcher_.sock = -1;
  kill(launcher_.pid, SIGKILL);  // our unreaped child: the pid is still its own
  int st = 0;
  while (waitpid(launcher_.pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (launcher_.pidfd >= 0) close(launcher_.pidfd);
  std::string how = WIFSIGNALED(st) ? "was killed by signal " + std::to_string(WTERMSIG(st))
                                    : "exited with status " + std::to_string(WEXITSTATUS(st));
  orphaned_note_ = "pardo's launcher process (pardo-shepherd --launcher, pid " +
                   std::to_string(launcher_.pid) + ") " + how +
                   " while the task ran; its keeper killed the task's tree";
  launcher_ = Launcher{};
  drop_idle();  // the launcher's death ended them too (PDEATHSIG)
  for (auto& kv : live_) {
    orphaned(*kv.second);
    s.signal_tree(*kv.second, SIGKILL);  // the keeper does it already; be sure, and bound it
  }
}

// A task whose launcher died: it fails with the reason, unless it had ended already.
void KeeperRung::orphaned(TaskState& t) {
  if (!t.leader_done && t.c.spawn_stage == STAGE_NONE) {
    t.c.spawn_stage = STAGE_LAUNCHER;
    t.c.spawn_errno = ECHILD;
  }
  if (t.c.note.empty()) t.c.note = orphaned_note_.empty() ? "pardo's launcher process died" : orphaned_note_;
}

void KeeperRung::stop_launcher() {
  drop_idle();
  if (launcher_.pid <= 0) return;
  // EOF on its socket: it exits at once (every tree was killed before shutdown).
  if (launcher_.sock >= 0) close(launcher_.sock);
  if (launcher_.pidfd >= 0) {
    struct pollfd p{launcher_.pidfd, POLLIN, 0};
    poll(&p, 1, 2000);
    close(launcher_.pidfd);
  }
  kill(launcher_.pid, SIGKILL);  // unreaped: still ours
  while (waitpid(launcher_.pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  launcher_ = Launcher{};
}

// The keeper is gone: TREE_GONE said so (it exits right after), or the launcher reaped
// it (KEEPER_EXIT, with its wait status), or its pipe ended with neither (the launcher
// is gone too).
void KeeperRung::keeper_done(Supervisor& s, TaskState& t, bool have_status, int st) {
  if (t.child_reaped) return;
  t.child_reaped = true;
  if (!t.leader_done) {
    // The keeper died without reporting its task's end: it was killed from outside, or
    // could not start. Report that rather than guess.
    if (!have_status) st = SIGKILL;  // a wait status: killed by SIGKILL
    if (!t.got_started && t.c.spawn_stage == STAGE_NONE) {
      t.c.spawn_stage = STAGE_HELPER;
      t.c.spawn_errno = WIFSIGNALED(st) ? EINTR : ECHILD;
    } else if (t.c.note.empty()) {
      t.c.note = "pardo's keeper process died unexpectedly";
    }
    s.leader_exited(t, st, 0, 0, 0);
    if (!t.got_started) s.publish_pid(t);
  }
  // The keeper reaped its whole tree before it exited (it is a subreaper).
  s.tree_gone(t);
}

void KeeperRung::read_status(Supervisor& s, TaskState& t) {
  if (t.status_fd < 0) return;
  bool eof = false;
  char buf[4096];
  while (true) {
    ssize_t n = read(t.status_fd, buf, sizeof buf);
    if (n > 0) {
      t.status_buf.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
      s.unwatch_fd(t.status_fd);
      close(t.status_fd);
      t.status_fd = -1;
      eof = true;
    }
    break;
  }
  while (t.status_buf.size() >= sizeof(ShepherdMsg)) {
    ShepherdMsg m;
    memcpy(&m, t.status_buf.data(), sizeof m);
    t.status_buf.erase(0, sizeof m);
    if (task_message(s, t, m)) continue;
    switch (m.type) {
      case MSG_TREE_GONE:
        t.c.cpu_user_us = m.utime_us;
        t.c.cpu_sys_us = m.stime_us;
        if (m.maxrss_kb > t.c.max_rss_kb) t.c.max_rss_kb = m.maxrss_kb;
        keeper_done(s, t, true, 0);  // it exits right after saying so
        break;
      case MSG_KEEPER_EXIT:
        keeper_done(s, t, true, m.a);
        break;
    }
  }
  if (eof) keeper_done(s, t, false, 0);
}

// A short task's exit (or its tree's end) is its start's only announcement.
void KeeperRung::announce_start(Supervisor& s, TaskState& t, int32_t pid) {
  if (t.got_started) return;
  t.got_started = true;
  t.c.pid = pid;
  s.publish_pid(t);
}

// What a per-task keeper and a kept keeper both say of their task as it goes: true when
// m was one of those messages (started, could not start, leader exited, orphaned).
bool KeeperRung::task_message(Supervisor& s, TaskState& t, const ShepherdMsg& m) {
  switch (m.type) {
    case MSG_STARTED:
      t.got_started = true;
      t.c.pid = m.a;
      t.child_pid = m.b;
      s.publish_pid(t);
      return true;
    case MSG_EXEC_FAILED:
      t.got_started = true;
      t.c.spawn_stage = m.a;
      t.c.spawn_errno = m.b;
      t.c.pid = -1;
      t.leader_done = true;
      s.publish_pid(t);
      return true;
    case MSG_LEADER_EXIT:
      announce_start(s, t, m.b);
      s.leader_exited(t, m.a, m.utime_us, m.stime_us, m.maxrss_kb);
      return true;
    case MSG_ORPHANED:
      orphaned(t);
      return true;
    default:
      return false;
  }
}

}  // namespace pardo
