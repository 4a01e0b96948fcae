#include "spawn.hpp"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

extern "C" long pardo_clone3_run(void* args, size_t size, int (*fn)(void*), void* arg);

namespace pardo {
namespace {

// The kernel's struct clone_args (v2, with the cgroup field), spelled out so that we do
// not depend on the installed kernel headers being new enough.
struct CloneArgs {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
      set_tid, set_tid_size, cgroup;
};

struct KernelSigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  unsigned long mask;
};

struct ChildError {
  int32_t stage;
  int32_t err;
};

#if defined(__x86_64__) || defined(__aarch64__)
constexpr bool kHaveTrampoline = true;
#else
constexpr bool kHaveTrampoline = false;
#endif

// One stack for the vfork-style child. The supervisor thread is the only spawner in the
// extension and CLONE_VFORK keeps the parent suspended until the child execs or exits,
// so one stack suffices; the mutex keeps it correct if that ever changes.
constexpr size_t kChildStackSize = 128 * 1024;
std::mutex g_stack_mu;
void* g_stack = nullptr;

void* child_stack() {
  if (!g_stack) {
    void* p = mmap(nullptr, kChildStackSize, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    g_stack = p;
  }
  return g_stack;
}

[[noreturn]] void child_fail(const ChildPlan* plan, int stage, int err) {
  if (plan->err_fd >= 0) {
    ChildError ce{stage, err};
    ssize_t r;
    do {
      r = write(plan->err_fd, &ce, sizeof ce);
    } while (r < 0 && errno == EINTR);
  } else {
    ChildPlan* p = const_cast<ChildPlan*>(plan);
    p->err_errno = err;
    p->err_stage = stage;
  }
  syscall(SYS_exit, 127);
  __builtin_unreachable();
}

// Runs in the child, sharing memory with the (suspended) parent thread: only system calls
// and reads of the prepared plan. errno writes land in the parent thread's errno, which
// the parent does not rely on across the spawn.
int child_main(void* arg) {
  const ChildPlan* plan = static_cast<const ChildPlan*>(arg);

  // Handlers were reset to SIG_DFL by CLONE_CLEAR_SIGHAND (or are reset here where the
  // kernel lacks it); ignored signals stay ignored, as across any exec (so `nohup` keeps
  // working) -- except the ones Python itself ignores, which programs expect at default
  // (subprocess restores the same ones).
  KernelSigaction dfl{reinterpret_cast<void*>(SIG_DFL), 0, nullptr, 0};
  if (!plan->handlers_cleared) {
    for (int s = 1; s < 65; ++s) {
      if (s == SIGKILL || s == SIGSTOP) continue;
      KernelSigaction old;
      if (syscall(SYS_rt_sigaction, s, nullptr, &old, sizeof(unsigned long)) == 0 &&
          old.handler != reinterpret_cast<void*>(SIG_IGN) && old.handler != reinterpret_cast<void*>(SIG_DFL))
        syscall(SYS_rt_sigaction, s, &dfl, nullptr, sizeof(unsigned long));
    }
  }
  for (int s : {SIGPIPE, SIGXFSZ}) syscall(SYS_rt_sigaction, s, &dfl, nullptr, sizeof(unsigned long));

  if (!plan->cgroup_procs.empty()) {
    int fd = open(plan->cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) child_fail(plan, STAGE_CGROUP, errno);
    close(fd);
  }
  if (plan->new_session && setsid() < 0) child_fail(plan, STAGE_SESSION, errno);
  if (plan->pdeathsig) prctl(PR_SET_PDEATHSIG, plan->pdeathsig);

  for (const auto& m : plan->fds) {
    if (m.first == m.second) {
      if (fcntl(m.first, F_SETFD, 0) < 0) child_fail(plan, STAGE_FDS, errno);
    } else if (dup2(m.second, m.first) < 0) {
      child_fail(plan, STAGE_FDS, errno);
    }
  }
  int max_target = 2;
  for (const auto& m : plan->fds) max_target = m.first > max_target ? m.first : max_target;
  // Everything above the targets is closed at exec (the error pipe included).
  syscall(SYS_close_range, max_target + 1, ~0U, CLOSE_RANGE_CLOEXEC);

  if (!plan->cwd.empty() && chdir(plan->cwd.c_str()) < 0) child_fail(plan, STAGE_CHDIR, errno);
  if (plan->has_cpus && sched_setaffinity(0, sizeof(cpu_set_t), &plan->cpus) < 0)
    child_fail(plan, STAGE_AFFINITY, errno);
  if (plan->has_nice) {
    if (setpriority(PRIO_PROCESS, 0, plan->nice) < 0) child_fail(plan, STAGE_NICE, errno);
  } else {
    if (plan->base_nice != plan->forked_nice)
      setpriority(PRIO_PROCESS, 0, plan->base_nice);  // lowering priority is always allowed
  }
  if (plan->restore_nofile) setrlimit(RLIMIT_NOFILE, &plan->nofile);
  if (plan->rlimit_as > 0) {
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(plan->rlimit_as);
    if (setrlimit(RLIMIT_AS, &rl) < 0) child_fail(plan, STAGE_RLIMIT, errno);
  }

  // The supervisor thread blocks every signal; the program must start with none blocked.
  unsigned long empty = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, nullptr, sizeof empty);

  char* const* envp = plan->has_env ? plan->env_ptrs.data() : environ;
  int err = ENOENT;
  bool saw_eacces = false;
  for (char* path : plan->path_ptrs) {
    if (!path) break;
    execve(path, plan->argv_ptrs.data(), envp);
    err = errno;
    // Keep searching PATH on the same errors execvp keeps searching on.
    if (err == EACCES) {
      saw_eacces = true;
    } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
               err != ETIMEDOUT) {
      break;
    }
  }
  if (saw_eacces && (err == ENOENT || err == ENOTDIR)) err = EACCES;
  child_fail(plan, STAGE_EXEC, err);
}

}  // namespace

const char* stage_name(int stage) {
  switch (stage) {
    case STAGE_EXEC: return "exec";
    case STAGE_CHDIR: return "chdir";
    case STAGE_FDS: return "fds";
    case STAGE_SESSION: return "setsid";
    case STAGE_AFFINITY: return "affinity";
    case STAGE_NICE: return "nice";
    case STAGE_RLIMIT: return "rlimit";
    case STAGE_CGROUP: return "cgroup";
    case STAGE_CLONE: return "clone";
    case STAGE_HELPER: return "helper";
    default: return "none";
  }
}

void ChildPlan::finalize() {
  argv_ptrs.clear();
  for (auto& a : argv) argv_ptrs.push_back(a.data());
  argv_ptrs.push_back(nullptr);
  env_ptrs.clear();
  for (auto& e : env) env_ptrs.push_back(e.data());
  env_ptrs.push_back(nullptr);
  path_ptrs.clear();
  for (auto& p : exec_paths) path_ptrs.push_back(p.data());
  path_ptrs.push_back(nullptr);
}

std::vector<std::string> exec_candidates(const std::string& program, const std::string& path_var) {
  std::vector<std::string> out;
  if (program.empty()) {
    out.push_back(program);
    return out;
  }
  if (program.find('/') != std::string::npos) {
    out.push_back(program);
    return out;
  }
  std::string pv = path_var.empty() ? std::string("/bin:/usr/bin") : path_var;
  size_t start = 0;
  while (true) {
    size_t end = pv.find(':', start);
    std::string dir = pv.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (dir.empty()) dir = ".";  // an empty PATH entry means the current directory
    out.push_back(dir + "/" + program);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

std::vector<int> normalize_fds(std::vector<std::pair<int, int>>& fds) {
  int max_target = 2;
  for (auto& m : fds) max_target = m.first > max_target ? m.first : max_target;
  std::vector<int> temps;
  for (auto& m : fds) {
    if (m.second <= max_target && m.second != m.first) {
      int d = fcntl(m.second, F_DUPFD_CLOEXEC, max_target + 1);
      if (d >= 0) {
        temps.push_back(d);
        m.second = d;
      }
    }
  }
  return temps;
}

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

// Kernels before 5.5 reject CLONE_CLEAR_SIGHAND; remember that after the first refusal.
std::atomic<bool> g_clear_sighand{true};

static long clone_once(ChildPlan& plan, CloneArgs& ca) {
  if (kHaveTrampoline) {
    std::lock_guard<std::mutex> lk(g_stack_mu);
    void* stack = child_stack();
    if (!stack) return -ENOMEM;
    ca.stack = reinterpret_cast<uint64_t>(stack);
    ca.stack_size = kChildStackSize;
    return pardo_clone3_run(&ca, sizeof ca, child_main, &plan);
  }
  // No trampoline for this CPU: a fork-style clone3 (copies page tables, slower, same
  // semantics). The child runs child_main on its copy of our stack.
  ca.flags &= ~static_cast<uint64_t>(CLONE_VM | CLONE_VFORK);
  long r = syscall(SYS_clone3, &ca, sizeof ca);
  if (r == 0) syscall(SYS_exit, child_main(&plan));
  return r < 0 ? -errno : r;
}

static SpawnOutcome do_clone(ChildPlan& plan, int cgroup_fd) {
  SpawnOutcome out;
  int pidfd = -1;
  CloneArgs ca;
  long r;
  for (int attempt = 0; attempt < 2; ++attempt) {
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD;
    plan.handlers_cleared = g_clear_sighand.load();
    if (plan.handlers_cleared) ca.flags |= CLONE_CLEAR_SIGHAND;
    ca.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    ca.exit_signal = SIGCHLD;
    if (cgroup_fd >= 0) {
      ca.flags |= CLONE_INTO_CGROUP;
      ca.cgroup = static_cast<uint64_t>(cgroup_fd);
    }
    r = clone_once(plan, ca);
    if (r == -EINVAL && plan.handlers_cleared) {
      g_clear_sighand.store(false);
      continue;
    }
    break;
  }
  if (r < 0) {
    out.stage = STAGE_CLONE;
    out.err = static_cast<int>(-r);
    return out;
  }
  out.pid = static_cast<pid_t>(r);
  out.pidfd = pidfd;
  return out;
}

SpawnOutcome spawn_child(ChildPlan& plan, int cgroup_fd) {
  // A vfork-style child reports failure in plan.err_*; a fork-style one needs a pipe.
  int pipefd[2] = {-1, -1};
  if (!kHaveTrampoline && pipe2(pipefd, O_CLOEXEC) < 0) {
    SpawnOutcome o;
    o.stage = STAGE_CLONE;
    o.err = errno;
    return o;
  }
  plan.err_fd = pipefd[1];
  plan.err_stage = 0;
  plan.err_errno = 0;
  plan.finalize();
  SpawnOutcome out = do_clone(plan, cgroup_fd);
  int stage = 0, err = 0;
  if (pipefd[1] >= 0) {
    close(pipefd[1]);
    ChildError ce{0, 0};
    ssize_t n = -1;
    if (out.pid > 0) {
      do {
        n = read(pipefd[0], &ce, sizeof ce);
      } while (n < 0 && errno == EINTR);
    }
    close(pipefd[0]);
    if (n == static_cast<ssize_t>(sizeof ce)) {
      stage = ce.stage;
      err = ce.err;
    }
  } else {
    stage = plan.err_stage;
    err = plan.err_errno;
  }
  plan.err_fd = -1;
  if (out.pid > 0 && stage != 0) {
    // The child reported a failure and exited: reap it now, it is ours alone.
    int st;
    while (waitpid(out.pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (out.pidfd >= 0) close(out.pidfd);
    out.pid = -1;
    out.pidfd = -1;
    out.stage = stage;
    out.err = err;
  }
  return out;
}

bool raise_nofile_limit(struct rlimit* original) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return false;
  *original = rl;
  rlim_t want = rl.rlim_max == RLIM_INFINITY ? 1048576 : rl.rlim_max;
  if (want > 1048576) want = 1048576;
  if (rl.rlim_cur >= want) return false;
  rl.rlim_cur = want;
  return setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

bool clone3_into_cgroup_supported() {
  // Probe: CLONE_INTO_CGROUP with an invalid fd gives EBADF where the flag is known and
  // E2BIG/EINVAL/ENOSYS where it is not. Nothing is created either way.
  static std::atomic<int> cached{-1};
  int c = cached.load();
  if (c >= 0) return c == 1;
  CloneArgs ca;
  memset(&ca, 0, sizeof ca);
  ca.flags = CLONE_INTO_CGROUP;
  ca.exit_signal = SIGCHLD;
  ca.cgroup = static_cast<uint64_t>(-1) >> 33;  // a huge, surely closed fd
  long r = syscall(SYS_clone3, &ca, sizeof ca);
  if (r == 0) syscall(SYS_exit, 0);  // cannot happen with a bad fd; be safe
  bool ok = r < 0 && errno == EBADF;
  if (r > 0) waitpid(static_cast<pid_t>(r), nullptr, 0);
  cached.store(ok ? 1 : 0);
  return ok;
}

}  // namespace pardo
