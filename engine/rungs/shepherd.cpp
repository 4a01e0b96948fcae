// The shepherd rung: our child is pardo-shepherd --task (engine/shepherd/keeper.cpp), a
// child subreaper in a session of its own that starts the task, reports on a status pipe
// (shepherd/protocol.hpp) and obeys a control pipe; it exits only once the whole tree is
// reaped, so its exit means "tree gone".
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.hpp"
#include "rungs/rung.hpp"
#include "shepherd/protocol.hpp"
#include "supervisor.hpp"
#include "task.hpp"

namespace pardo {
namespace {

class ShepherdRung : public Rung {
 public:
  explicit ShepherdRung(std::string path) : path_(std::move(path)) {}
  const char* name() const override { return "shepherd"; }

  SpawnOutcome start(Supervisor& s, TaskState& t, ChildPlan& plan) override {
    SpawnOutcome o;
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
    int top = 2;
    for (auto& m : plan.fds) top = m.first > top ? m.first : top;
    int status_target = top + 1, ctl_target = top + 2;
    std::vector<std::string> argv{path_, "--task", "--status-fd=" + std::to_string(status_target),
                                  "--ctl-fd=" + std::to_string(ctl_target)};
    if (t.req.linger) argv.push_back("--linger");
    for (auto& p : plan.exec_paths) argv.push_back("--exec=" + p);
    argv.push_back("--");
    for (auto& a : plan.argv) argv.push_back(a);
    plan.argv = std::move(argv);
    plan.exec_paths = {path_};
    plan.pdeathsig = SIGTERM;  // the shepherd catches it and kills its tree
    plan.fds.push_back({status_target, st[1]});
    plan.fds.push_back({ctl_target, ctl[0]});
    // Our ends never block this thread (each end of a pipe is an open file of its own, so
    // the shepherd's ends stay blocking). Set before the spawn, so a failure costs nothing
    // to undo.
    if (fcntl(st[0], F_SETFL, O_NONBLOCK) < 0 || fcntl(ctl[1], F_SETFL, O_NONBLOCK) < 0) {
      o.stage = STAGE_FDS;
      o.err = errno;
    } else {
      o = spawn_with_fds(plan, -1);
    }
    close(st[1]);
    close(ctl[0]);
    // Our helper could not be exec'd: say so, rather than blame the task's program.
    if (o.stage == STAGE_EXEC) o.stage = STAGE_HELPER;
    if (o.stage != STAGE_NONE) {
      close(st[0]);
      close(ctl[1]);
      return o;
    }
    t.status_fd = st[0];
    t.ctl_fd = ctl[1];
    t.child_pid = o.pid;
    t.pidfd = o.pidfd;
    s.watch_fd(t, t.status_fd, FD_STATUS, EPOLLIN);
    return o;
  }

  void on_child_exit(Supervisor& s, TaskState& t) override { shepherd_exited(s, t, false); }

  void on_event(Supervisor& s, TaskState& t, int kind) override {
    if (kind == FD_STATUS) read_status(s, t);
  }

  void signal_tree(Supervisor&, TaskState& t, int sig) override {
    if (t.ctl_fd < 0 || t.child_reaped) return;
    // After the leader's exit the shepherd kills the rest by itself (unless lingering).
    if (sig == SIGKILL && t.leader_done && !t.req.linger) return;
    char c = sig == SIGKILL ? CTL_KILL : CTL_TERM;
    ssize_t r;
    do {
      r = write(t.ctl_fd, &c, 1);
    } while (r < 0 && errno == EINTR);
    // The byte could not go: EAGAIN (the shepherd has 64 KiB of them unread) or an error
    // that should not happen. SIGTERM says to the shepherd what a K byte says: kill the
    // whole tree (it is how it learns of our death too), harsher than a T byte but better
    // than a signal not sent. It is our unreaped child, so its pid is still its own.
    // EPIPE needs nothing: the shepherd is exiting, and its exit comes as an event.
    if (r != 1 && errno != EPIPE) kill(t.child_pid, SIGTERM);
  }

  void finish(Supervisor& s, TaskState& t) override {
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

 private:
  // The shepherd exited: its pidfd said so, or (no pidfds, Linux < 5.3) its status pipe
  // reached end-of-file, which only its exit brings (the pipe is close-on-exec in its
  // leader and it never closes the pipe itself): then it is a zombie a moment later.
  void shepherd_exited(Supervisor& s, TaskState& t, bool at_eof) {
    int st;
    struct rusage ru;
    if (!reap_child(s, t, &st, &ru, at_eof)) return;
    read_status(s, t);  // everything the shepherd said before it exited
    if (!t.leader_done) {
      // The shepherd died without reporting its task's end: it was killed from outside,
      // or could not start. Report that rather than guess.
      if (!t.got_started && t.c.spawn_stage == STAGE_NONE) {
        t.c.spawn_stage = STAGE_HELPER;
        t.c.spawn_errno = WIFSIGNALED(st) ? EINTR : ECHILD;
      } else {
        if (t.c.note.empty()) t.c.note = "the shepherd process died unexpectedly";
      }
      s.leader_exited(t, st, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss);
      if (!t.got_started) s.publish_pid(t);
    }
    s.tree_gone(t);  // the shepherd exits only once its tree is reaped
  }

  void read_status(Supervisor& s, TaskState& t) {
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
        eof = n == 0;
      }
      break;
    }
    while (t.status_buf.size() >= sizeof(ShepherdMsg)) {
      ShepherdMsg m;
      memcpy(&m, t.status_buf.data(), sizeof m);
      t.status_buf.erase(0, sizeof m);
      switch (m.type) {
        case MSG_STARTED:
          t.got_started = true;
          t.c.pid = m.a;
          s.publish_pid(t);
          break;
        case MSG_EXEC_FAILED:
          t.got_started = true;
          t.c.spawn_stage = m.a;
          t.c.spawn_errno = m.b;
          t.c.pid = -1;
          t.leader_done = true;
          s.publish_pid(t);
          break;
        case MSG_LEADER_EXIT:
          s.leader_exited(t, m.a, m.utime_us, m.stime_us, m.maxrss_kb);
          break;
        case MSG_TREE_GONE:
          t.c.cpu_user_us = m.utime_us;
          t.c.cpu_sys_us = m.stime_us;
          if (m.maxrss_kb > t.c.max_rss_kb) t.c.max_rss_kb = m.maxrss_kb;
          break;
      }
    }
    if (eof && t.pidfd < 0 && !t.child_reaped) shepherd_exited(s, t, true);
  }

  std::string path_;
};

}  // namespace

std::unique_ptr<Rung> make_shepherd_rung(const std::string& shepherd_path) {
  return std::make_unique<ShepherdRung>(shepherd_path);
}

}  // namespace pardo
