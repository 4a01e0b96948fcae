// KeeperRung's kept keepers (rungs/keepers.hpp; their side: shepherd/keeper_pool.cpp).
//
//   start ──► idle_.back() or new_kept() ──task message + fds──► kept keeper
//                                                                  │
//   read_kept ◄── STARTED?, LEADER_EXIT?, DONE / TREE_GONE ────────┘
//      │ the tree is gone: release_kept ──► idle_ (reusable) or closed (retiring)
//
// A keeper is asked of the launcher only when none is idle, so there are about as many as
// tasks ever ran at once. An idle keeper is not watched: one that died meanwhile (killed
// from outside, its launcher gone) is found when a task is sent to it (EPIPE, ECONNRESET)
// and the task goes to the next one, or to a new one.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rungs/keepers.hpp"
#include "raw/rawmsg.hpp"
#include "supervisor.hpp"
#include "task.hpp"

namespace pardo {
namespace {

// Idle keepers kept beyond this are let go (EOF on their socket: they exit). More are
// idle only after more tasks than this ran at once; each holds a few pages and two fds.
constexpr size_t kMaxIdleKept = 256;

// Send one message on a keeper's socket, with fds (SCM_RIGHTS). 0 or the errno; never
// blocks (an idle keeper's socket has room: nothing else is queued on it).
int send_message(int sock, const struct iovec* iov, int niov, const std::vector<int>& fds) {
  alignas(struct cmsghdr) char cbuf[fds_space(kLaunchMaxFds + 3)];
  struct msghdr mh{};
  mh.msg_iov = const_cast<struct iovec*>(iov);
  mh.msg_iovlen = static_cast<size_t>(niov);
  attach_fds(&mh, cbuf, fds.data(), fds.size());
  ssize_t n;
  do {
    n = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? errno : 0;
}

}  // namespace

// Start the task on a kept keeper. False when the task is not one for a kept keeper (its
// message would be too big): the per-task keeper takes it. True otherwise, with *o saying
// whether it started.
bool KeeperRung::start_kept(Supervisor& s, TaskState& t, const ChildPlan& plan, SpawnOutcome* o) {
  if (sizeof req_ + strings_.size() > kKeptMaxMessage) return false;
  std::vector<int> fds;
  for (auto& m : plan.fds) fds.push_back(m.second);
  struct iovec iov[2] = {{&req_, sizeof req_}, {const_cast<char*>(strings_.data()), strings_.size()}};
  while (true) {
    bool fresh = idle_.empty();
    int sock;
    if (fresh) {
      sock = new_kept(s, o);
      if (sock < 0) return true;
    } else {
      sock = idle_.back();
      idle_.pop_back();
    }
    int err = send_message(sock, iov, 2, fds);
    if (err == 0) {
      t.kept_keeper = true;
      t.status_fd = t.ctl_fd = sock;
      t.child_pid = -1;  // the keeper's pid, once it says it (it is not our child)
      t.pidfd = -1;      // the task's end comes on the socket
      live_[t.id] = &t;
      s.watch_fd(t, sock, FD_STATUS, EPOLLIN);
      return true;
    }
    if (err == EMSGSIZE) {
      // The socket's buffer is smaller than the message (net.core.wmem_default set low):
      // the keeper is fine, the task goes to a keeper of its own.
      idle_.push_back(sock);
      return false;
    }
    close(sock);
    // An idle keeper that died while idle: the next one. A new one that cannot take
    // the task: that is the failure to report.
    if (fresh) {
      o->stage = STAGE_HELPER;
      o->err = err;
      return true;
    }
  }
}

// Ask the launcher for a new kept keeper. Our end of its socket, or -1 with *o's stage
// and errno.
int KeeperRung::new_kept(Supervisor& s, SpawnOutcome* o) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    o->stage = STAGE_HELPER;
    o->err = errno;
    return -1;
  }
  // PARDO_TEST_KEPT_SNDBUF: the tests' stand-in for a host whose net.core.wmem_default is
  // low (a system-wide setting they may not change), so that a task message can be
  // refused with EMSGSIZE (start_kept).
  static const int test_sndbuf = [] {
    const char* v = getenv("PARDO_TEST_KEPT_SNDBUF");
    return v ? atoi(v) : 0;
  }();
  if (test_sndbuf > 0) setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &test_sndbuf, sizeof test_sndbuf);
  // Our end never blocks this thread; the keeper's stays blocking (it must not drop a
  // message when we are slow to read).
  if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0) {
    o->stage = STAGE_FDS;
    o->err = errno;
    close(sv[0]);
    close(sv[1]);
    return -1;
  }
  LaunchRequest h;
  memset(&h, 0, sizeof h);
  h.magic = kKeeperMagic;
  struct iovec iov{&h, sizeof h};
  struct msghdr mh{};
  alignas(struct cmsghdr) char cbuf[fds_space(1)];
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  attach_fds(&mh, cbuf, &sv[1], 1);
  // A launcher that died since the last request is replaced, once.
  for (int attempt = 0; attempt < 2; ++attempt) {
    o->stage = STAGE_NONE;
    if (!ensure_launcher(s, o)) break;
    // The header is far smaller than the socket's buffer: it goes whole or not at all
    // (a stream socket may still take part of it: then the launcher cannot be trusted).
    ssize_t n;
    do {
      n = sendmsg(launcher_.sock, &mh, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(sizeof h)) {
      close(sv[1]);
      return sv[0];
    }
    int err = n < 0 ? (errno == EAGAIN ? ETIMEDOUT : errno) : EPROTO;
    launcher_died(s);
    o->stage = STAGE_HELPER;
    o->err = err;
    if (err != EPIPE && err != ECONNRESET) break;
  }
  if (o->stage == STAGE_NONE) o->stage = STAGE_HELPER;
  close(sv[0]);
  close(sv[1]);
  return -1;
}

void KeeperRung::signal_kept(TaskState& t, int sig) {
  // After the leader's exit the keeper kills the rest by itself (unless lingering).
  if (sig == SIGKILL && t.leader_done && !t.req.linger) return;
  char c = sig == SIGKILL ? CTL_KILL : CTL_TERM;
  ssize_t r;
  do {
    r = send(t.ctl_fd, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  // The byte could not go though the keeper lives (its socket full: it cannot be, with at
  // most two control bytes a task): SIGTERM tells it what K does. EPIPE/ECONNRESET need
  // nothing: the keeper is gone, and its end comes on the socket.
  if (r != 1 && errno != EPIPE && errno != ECONNRESET && t.child_pid > 0) kill(t.child_pid, SIGTERM);
}

// Detach the task from its keeper: back to the idle stack when the keeper said it waits
// for the next task, else closed (a keeper that retires exits by itself; one whose state
// we do not know sees EOF, kills what it holds and exits).
void KeeperRung::release_kept(Supervisor& s, TaskState& t, bool reusable) {
  int sock = t.status_fd;
  t.status_fd = t.ctl_fd = -1;
  if (sock < 0) return;
  s.unwatch_fd(sock);
  if (reusable && launcher_.sock >= 0 && idle_.size() < kMaxIdleKept)
    idle_.push_back(sock);
  else
    close(sock);
}

void KeeperRung::drop_idle() {
  for (int sock : idle_) close(sock);
  idle_.clear();
}

void KeeperRung::read_kept(Supervisor& s, TaskState& t) {
  while (t.status_fd >= 0) {
    ShepherdMsg m;
    ssize_t n = recv(t.status_fd, &m, sizeof m, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n != static_cast<ssize_t>(sizeof m)) {
      // EOF: the keeper died without finishing the task (killed from outside, or its
      // launcher gone); or a message out of step. Either way, never reused.
      release_kept(s, t, false);
      keeper_done(s, t, false, 0);
      return;
    }
    if (task_message(s, t, m)) continue;
    switch (m.type) {
      case MSG_DONE:
        // The leader's exit and the tree's end at once; the figures are the tree's. The
        // tree is gone first, so that the leader's exit asks no kill of it.
        announce_start(s, t, m.b);
        release_kept(s, t, m.pad != kKeptRetiring);
        t.child_reaped = true;
        s.tree_gone(t);
        s.leader_exited(t, m.a, m.utime_us, m.stime_us, m.maxrss_kb);
        return;
      case MSG_TREE_GONE:
        t.c.cpu_user_us = m.utime_us;
        t.c.cpu_sys_us = m.stime_us;
        if (m.maxrss_kb > t.c.max_rss_kb) t.c.max_rss_kb = m.maxrss_kb;
        release_kept(s, t, m.pad != kKeptRetiring);
        keeper_done(s, t, true, 0);
        return;
    }
  }
}

}  // namespace pardo
