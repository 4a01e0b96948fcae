// Choosing the rung, and what the rungs share.
#include "rungs/rung.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rungs/cgroup_tree.hpp"
#include "spawn.hpp"
#include "supervisor.hpp"
#include "task.hpp"

namespace pardo {

bool reap_child(Supervisor& s, TaskState& t, int* status, struct rusage* ru, bool block) {
  if (t.child_reaped) return false;
  pid_t r;
  do {
    r = wait4(t.child_pid, status, block ? 0 : WNOHANG, ru);
  } while (r < 0 && errno == EINTR);
  if (r == 0 || (r < 0 && errno != ECHILD)) return false;
  if (r < 0) {  // someone else reaped it (should not happen)
    *status = 0;
    memset(ru, 0, sizeof *ru);
  }
  t.child_reaped = true;
  s.drop_pidfd(t);  // the pidfd has nothing more to say
  return true;
}

void Guardian::stop() {
  if (fd >= 0) close(fd);
  fd = -1;
  if (pidfd >= 0) {
    struct pollfd p{pidfd, POLLIN, 0};
    poll(&p, 1, 2000);
    close(pidfd);
    pidfd = -1;
  }
  if (pid > 0) waitpid(pid, nullptr, WNOHANG);
  pid = -1;
}

SpawnOutcome start_helper(const std::string& path, const std::vector<std::string>& args, int in,
                          int pdeathsig, const std::vector<std::pair<int, int>>& more) {
  SpawnOutcome o;
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0) {
    o.stage = STAGE_FDS;
    o.err = errno;
    return o;
  }
  ChildPlan plan;
  plan.exec_paths = {path};
  plan.argv = {path};
  plan.argv.insert(plan.argv.end(), args.begin(), args.end());
  plan.fds = {{0, in}, {1, devnull}, {2, devnull}};
  plan.fds.insert(plan.fds.end(), more.begin(), more.end());
  plan.pdeathsig = pdeathsig;
  o = spawn_with_fds(plan, -1);
  close(devnull);
  return o;
}

bool start_guardian(const std::string& shepherd, const std::vector<std::string>& args, Guardian* g,
                    std::string* why) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    *why = std::string("pipe: ") + strerror(errno);
    return false;
  }
  SpawnOutcome o = start_helper(shepherd, args, p[0], 0);
  close(p[0]);
  if (o.stage != STAGE_NONE) {
    close(p[1]);
    *why = "cannot start the guardian " + shepherd + ": " + strerror(o.err);
    return false;
  }
  // Room for many records: the pgroup guardian drains them at once, but a write must not
  // wait for it to be scheduled when tasks start in a burst.
  fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
  g->fd = p[1];
  g->pid = o.pid;
  g->pidfd = o.pidfd;
  return true;
}

const char* const kNoPidfd =
    "the kernel has no pidfds (Linux 5.3 has them), which this rung needs to learn of each "
    "task's exit";

RungChoice choose_rung(const std::string& wanted, const std::string& shepherd_path) {
  RungChoice ch;
  bool is_auto = wanted.empty() || wanted == "auto";
  if (!is_auto && wanted != "cgroup" && wanted != "shepherd" && wanted != "pgroup") {
    ch.error = "unknown isolation '" + wanted + "': use auto, cgroup, shepherd or pgroup";
    return ch;
  }
  bool have_shepherd = !shepherd_path.empty() && access(shepherd_path.c_str(), X_OK) == 0;
  // The cgroup and pgroup rungs learn of their child's exit from its pidfd; the shepherd
  // rung also from its status pipe, so it alone works without pidfds.
  const std::string no_pidfd = start_features().pidfd ? "" : kNoPidfd;
  std::string shepherd_why =
      have_shepherd ? "" : "the helper program " + shepherd_path + " is missing or not executable";
  std::string cg_why;
  if (is_auto || wanted == "cgroup") {
    std::string no_mount;
    if (find_cgroup2_mount(&no_mount).empty()) {
      cg_why = no_mount;  // a cgroup v1 host: say so first, whatever else is missing
    } else if (!no_pidfd.empty()) {
      cg_why = no_pidfd;
    } else if (!have_shepherd) {
      cg_why = shepherd_why + " (the cgroup rung needs it as its guardian)";
    } else {
      std::string sub;
      if (auto rung = make_cgroup_rung(shepherd_path, &sub, &cg_why)) {
        ch.rung = std::move(rung);
        ch.reason = "each task runs in its own cgroup v2 leaf under " + sub;
        return ch;
      }
    }
    if (!is_auto) {
      ch.error = cg_why;
      return ch;
    }
  }
  if (is_auto || wanted == "shepherd") {
    if (have_shepherd) {
      ch.rung = make_shepherd_rung(shepherd_path);
      ch.reason = is_auto ? "cgroup unavailable: " + cg_why : "forced by configuration";
      return ch;
    }
    if (!is_auto) {
      ch.error = shepherd_why;
      return ch;
    }
  }
  if (!no_pidfd.empty()) {
    ch.error = is_auto ? "no isolation rung can work here: shepherd: " + shepherd_why +
                             "; cgroup and pgroup: " + no_pidfd
                       : "pgroup: " + no_pidfd;
    return ch;
  }
  std::string guardian_why = shepherd_why;
  ch.rung = make_pgroup_rung(have_shepherd ? shepherd_path : std::string(), &guardian_why);
  ch.reason = is_auto ? "cgroup unavailable: " + cg_why + "; shepherd unavailable: " + shepherd_why
                      : "forced by configuration";
  if (!guardian_why.empty())
    ch.reason += "; no guardian (" + guardian_why +
                 "): if pardo is SIGKILLed, what its tasks started survives";
  return ch;
}

}  // namespace pardo
