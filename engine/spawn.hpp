// Starting one child process: everything is prepared in the parent, then the child runs
// only raw system calls between clone and exec (no libc wrapper: a child sharing our
// memory must not write errno, which lives in the spawning thread's TLS). Exec failures
// come back as (stage, errno): in shared memory (clone with CLONE_VM), else through a
// close-on-exec pipe.
#pragma once

#include <sched.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <cstdint>
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
  STAGE_SUPERVISE = 11,  // started, but the supervisor could not watch it: killed
  STAGE_LAUNCHER = 12,   // started, but pardo's launcher died while it ran: killed
  STAGE_LAUNCH = 13,     // pardo's launcher died before it said whether it started the task
};

const char* stage_name(int stage);

// How a child started without waiting for its exec got on. The kernel zeroes `word` and
// wakes futex waiters on it (CLONE_CHILD_CLEARTID) when the child has exec'd or exited,
// whichever comes first; a child that could not exec writes stage and err before exiting.
struct LaunchReport {
  alignas(4) volatile int32_t word = 0;  // != 0: the child may still be before its exec
  volatile int32_t stage = 0, err = 0;
  bool pending() const { return __atomic_load_n(&word, __ATOMIC_ACQUIRE) != 0; }
  // Block until not pending; false if timeout_ns (-1: no limit) passed first.
  bool wait(int64_t timeout_ns) const;
};

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
  // A child sharing our memory reports here: `own` for spawn_child (we are suspended
  // until it execs or exits), the caller's report for spawn_child_async.
  LaunchReport own;
  LaunchReport* report = nullptr;
  void* stack = nullptr;  // the child's stack while an asynchronous start is pending
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
// needed), adding the dups to *temps, which the caller closes after the spawn. 0, or the
// errno of a dup that failed (no fds left): the child's moves could then clobber each
// other, so the spawn must not go ahead.
int normalize_fds(std::vector<std::pair<int, int>>& fds, std::vector<int>* temps);

// spawn_child for a plan whose fds are not normalized yet (pardo's own helper programs):
// normalizes them, spawns, and closes the dups it made. A dup that fails is STAGE_FDS.
SpawnOutcome spawn_with_fds(ChildPlan& plan, int cgroup_fd);

// Start the child described by plan. cgroup_fd >= 0 places it atomically into that cgroup
// with clone3(CLONE_INTO_CGROUP). Never throws; failures come back in the outcome. The
// child's exit status is reaped here when it could not exec.
SpawnOutcome spawn_child(ChildPlan& plan, int cgroup_fd);

// Start the child and return as soon as it exists, without waiting for its exec: it runs
// beside this thread in our memory (CLONE_VM without CLONE_VFORK) on a stack of its own,
// so this thread goes on at once instead of sleeping until the exec. Until report->word
// is 0 the child reads `plan` and may write `*report`: neither may move or be freed; then
// finish_launch() takes the stack back. The exit status is never reaped here; a child
// that could not exec exits 127 with report->stage set. Only where
// async_spawn_supported().
SpawnOutcome spawn_child_async(ChildPlan& plan, int cgroup_fd, LaunchReport* report);
bool async_spawn_supported();
// True once the child of spawn_child_async no longer uses `plan` (its stack is back in
// the pool); false while it may still be before its exec.
bool finish_launch(ChildPlan& plan);

// Raise this process's soft RLIMIT_NOFILE towards the hard limit (each task in flight
// holds a few fds). True when it did; *original is then the limit children get back.
bool raise_nofile_limit(struct rlimit* original);

// True when clone3 with CLONE_INTO_CGROUP|CLONE_PIDFD is usable (probed once).
bool clone3_into_cgroup_supported();

// How children can be started here, probed once. Without clone3 (Linux < 5.3, Docker's
// default seccomp profile) children start through clone(); without pidfds (< 5.3) the
// outcome's pidfd is -1 and only a rung that learns of exits another way can work.
struct StartFeatures {
  bool clone3 = false;
  bool pidfd = false;
};
const StartFeatures& start_features();

}  // namespace pardo
