// Starting one child process: everything is prepared in the parent, then the child runs
// only async-signal-safe system calls between clone and exec (CPython's
// Modules/_posixsubprocess.c follows the same rule). Exec failures travel back through a
// close-on-exec pipe as (stage, errno).
#pragma once

#include <sched.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace pardo {

// Which step of the child's preparation failed; reported with the errno.
enum ChildStage : int {
  STAGE_NONE = 0,
  STAGE_EXEC = 1,
  STAGE_CHDIR = 2,
  STAGE_FDS = 3,
  STAGE_SESSION = 4,
  STAGE_AFFINITY = 5,
  STAGE_NICE = 6,
  STAGE_RLIMIT = 7,
  STAGE_CGROUP = 8,
  STAGE_CLONE = 9,
  STAGE_HELPER = 10,  // pardo's own helper program (the shepherd) could not be started
};

const char* stage_name(int stage);

// Everything the child needs, laid out before clone so the child never allocates.
struct ChildPlan {
  std::vector<std::string> exec_paths;  // candidates for execve, in PATH order
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "K=V" entries; used only when has_env
  bool has_env = false;
  std::string cwd;  // empty: inherit
  // (target, source): the child dup2()s source onto target. Sources are all above the
  // highest target, so the moves cannot clobber each other (see normalize_fds).
  std::vector<std::pair<int, int>> fds;
  bool new_session = true;
  int pdeathsig = 0;
  bool has_cpus = false;
  cpu_set_t cpus;
  bool has_nice = false;
  int nice = 0;
  int base_nice = 0;  // without has_nice: the nice value the child gets (the spawner's own
                      // may have been raised for its work, which the child must not inherit)
  int forked_nice = 0;  // the nice value the child has from the fork (no call when equal)
  long long rlimit_as = 0;  // bytes; 0: none
  bool restore_nofile = false;  // give the child this RLIMIT_NOFILE (the spawner raised its own)
  struct rlimit nofile {};
  std::string cgroup_procs;  // fallback placement: the child writes itself into this file

  // Filled by finalize(): pointer arrays into the strings above.
  std::vector<char*> argv_ptrs, env_ptrs, path_ptrs;
  int err_fd = -1;  // fork-style clone only: the child reports through this pipe
  // vfork-style clone: the child shares our memory and reports here instead (the parent
  // is suspended until the child execs or exits, so there is no race).
  volatile int err_stage = 0, err_errno = 0;
  bool handlers_cleared = false;  // the kernel reset the child's handlers (CLONE_CLEAR_SIGHAND)
  void finalize();
};

struct SpawnOutcome {
  pid_t pid = -1;
  int pidfd = -1;
  int stage = STAGE_NONE;  // != STAGE_NONE: the child could not start
  int err = 0;
};

// Build the list of paths execve should try for `program`, searching `path_var` like
// execvp when the name has no slash.
std::vector<std::string> exec_candidates(const std::string& program, const std::string& path_var);

// Make every source fd sit above the highest target fd (dup with F_DUPFD_CLOEXEC where
// needed). Returns fds that the caller must close after the spawn.
std::vector<int> normalize_fds(std::vector<std::pair<int, int>>& fds);

// Start the child described by plan. cgroup_fd >= 0 places it atomically into that cgroup
// with clone3(CLONE_INTO_CGROUP). Never throws; failures come back in the outcome. The
// child's exit status is reaped here when it could not exec.
SpawnOutcome spawn_child(ChildPlan& plan, int cgroup_fd);

// Raise this process's soft RLIMIT_NOFILE towards the hard limit (each task in flight
// holds a few fds). True when it did; *original is then the limit children get back.
bool raise_nofile_limit(struct rlimit* original);

// True when clone3 with CLONE_INTO_CGROUP|CLONE_PIDFD is usable (probed once).
bool clone3_into_cgroup_supported();

}  // namespace pardo
