#include "spawn.hpp"

#include "proc.hpp"
#include "raw/rawproc.hpp"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <linux/futex.h>
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
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
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

struct ChildError {
  int32_t stage;
  int32_t err;
};

#if defined(__x86_64__) || defined(__aarch64__)
constexpr bool kHaveTrampoline = true;
#else
constexpr bool kHaveTrampoline = false;
#endif

// The child makes its system calls through sys() (raw/rawsys.hpp): it may run beside the
// spawning thread in the same memory and TLS, so it must never write errno.

// setrlimit for the child. prlimit64 takes a struct of two 64-bit values, which is
// struct rlimit on the 64-bit targets of the trampoline; elsewhere the child is a
// fork-style copy with an errno of its own, and libc converts.
static_assert(!kHaveTrampoline || sizeof(rlim_t) == 8, "prlimit64 wants 64-bit limits");
inline long set_limit(int resource, const struct rlimit* rl) {
  if (kHaveTrampoline) return sys(SYS_prlimit64, 0, resource, rl, nullptr);
  return setrlimit(resource, rl) < 0 ? -errno : 0;
}

// Stacks for children that share our memory until their exec. A synchronous (vfork-style)
// start returns its stack at once; an asynchronous one when its child has exec'd or
// exited (finish_launch), so the pool holds about as many stacks as children were ever
// between clone and exec at once.
constexpr size_t kChildStackSize = 128 * 1024;
// g_stack_mu guards g_stacks: spawns come from the supervisor thread and, for the cgroup
// rung's guardian, from the thread that builds the Supervisor. Never held across a clone.
std::mutex g_stack_mu;
std::vector<void*> g_stacks;

void* take_stack() {
  std::lock_guard<std::mutex> lk(g_stack_mu);
  if (!g_stacks.empty()) {
    void* p = g_stacks.back();
    g_stacks.pop_back();
    return p;
  }
  void* p = mmap(nullptr, kChildStackSize, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void give_stack(void* p) {
  std::lock_guard<std::mutex> lk(g_stack_mu);
  g_stacks.push_back(p);
}

[[noreturn]] void child_fail(const ChildPlan* plan, int stage, int err) {
  if (plan->err_fd >= 0) {
    ChildError ce{stage, err};
    while (sys(SYS_write, plan->err_fd, &ce, sizeof ce) == -EINTR) {
    }
  } else {
    LaunchReport* r = plan->report ? plan->report : const_cast<LaunchReport*>(&plan->own);
    r->err = err;
    r->stage = stage;
  }
  for (;;) sys(SYS_exit, 127);
}

// Fail at `stage` when a system call returned -errno.
inline void check(const ChildPlan* plan, long r, int stage) {
  if (r < 0) child_fail(plan, stage, static_cast<int>(-r));
}

// The child: runs on its own small stack, sharing our memory until execve, so it must
// not allocate, lock, or call into libc beyond what sys() does.
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
      if (sys(SYS_rt_sigaction, s, nullptr, &old, sizeof(unsigned long)) == 0 &&
          old.handler != reinterpret_cast<void*>(SIG_IGN) && old.handler != reinterpret_cast<void*>(SIG_DFL))
        sys(SYS_rt_sigaction, s, &dfl, nullptr, sizeof(unsigned long));
    }
  }
  for (int s : {SIGPIPE, SIGXFSZ}) sys(SYS_rt_sigaction, s, &dfl, nullptr, sizeof(unsigned long));

  if (!plan->cgroup_procs.empty()) {
    long fd = sys(SYS_openat, AT_FDCWD, plan->cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC);
    check(plan, fd, STAGE_CGROUP);
    long w = sys(SYS_write, fd, "0", 1);
    check(plan, w == 0 ? -EIO : w, STAGE_CGROUP);
    sys(SYS_close, fd);
  }
  check(plan, sys(SYS_setsid), STAGE_SESSION);  // every rung: the task leads a session
  // Unchecked: PR_SET_PDEATHSIG fails only for an invalid signal number, and ours are
  // constants.
  if (plan->pdeathsig) sys(SYS_prctl, PR_SET_PDEATHSIG, plan->pdeathsig);

  for (const auto& m : plan->fds) {
    if (m.first == m.second)
      check(plan, sys(SYS_fcntl, m.first, F_SETFD, 0), STAGE_FDS);
    else
      check(plan, sys(SYS_dup3, m.second, m.first, 0), STAGE_FDS);
  }
  int max_target = 2;
  for (const auto& m : plan->fds) max_target = m.first > max_target ? m.first : max_target;
  // Everything above the targets is closed at exec (the error pipe included): a task never
  // sees an fd it was not given, and failing that it does not run.
  check(plan, cloexec_from(max_target + 1, plan->err_fd), STAGE_FDS);

  if (!plan->cwd.empty()) check(plan, sys(SYS_chdir, plan->cwd.c_str()), STAGE_CHDIR);
  if (plan->has_cpus) check(plan, sys(SYS_sched_setaffinity, 0, sizeof(cpu_set_t), &plan->cpus), STAGE_AFFINITY);
  if (plan->has_nice) {
    check(plan, sys(SYS_setpriority, PRIO_PROCESS, 0, plan->nice), STAGE_NICE);
  } else if (plan->base_nice != plan->forked_nice) {
    sys(SYS_setpriority, PRIO_PROCESS, 0, plan->base_nice);  // lowering priority is always allowed
  }
  // Unchecked: only the soft limit was raised, so putting it back is always permitted.
  if (plan->restore_nofile) set_limit(RLIMIT_NOFILE, &plan->nofile);
  if (plan->rlimit_as > 0) {
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(plan->rlimit_as);
    check(plan, set_limit(RLIMIT_AS, &rl), STAGE_RLIMIT);
  }

  // The supervisor thread blocks every signal; the program must start with none blocked.
  unsigned long empty = 0;
  sys(SYS_rt_sigprocmask, SIG_SETMASK, &empty, nullptr, sizeof empty);

  char* const* envp = plan->has_env ? plan->env_ptrs.data() : environ;
  int err = exec_search(plan->path_ptrs.data(), plan->argv_ptrs.data(), envp);
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
    case STAGE_SUPERVISE: return "supervise";
    case STAGE_LAUNCHER: return "launcher";
    case STAGE_LAUNCH: return "launch";
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

int normalize_fds(std::vector<std::pair<int, int>>& fds, std::vector<int>* temps) {
  int max_target = 2;
  for (auto& m : fds) max_target = m.first > max_target ? m.first : max_target;
  for (auto& m : fds) {
    if (m.second <= max_target && m.second != m.first) {
      int d = fcntl(m.second, F_DUPFD_CLOEXEC, max_target + 1);
      if (d < 0) return errno;
      temps->push_back(d);
      m.second = d;
    }
  }
  return 0;
}

#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

// Kernels before 5.5 reject CLONE_CLEAR_SIGHAND; remember that after the first refusal.
std::atomic<bool> g_clear_sighand{true};

// Without clone3 (refused: before Linux 5.3, or by a seccomp profile such as Docker's
// default, which answers ENOSYS so that programs fall back): the same child through
// clone(), which glibc runs on the stack we give it and which writes nothing into our
// memory in the child. CLONE_PIDFD where the kernel has pidfds (5.2; probed as
// pidfd_open, 5.3); CLONE_CLEAR_SIGHAND does not exist for clone(), so the child resets
// its handlers itself.
static long clone_legacy(ChildPlan& plan, int* pidfd, bool async) {
  int flags = SIGCHLD;
  if (start_features().pidfd) flags |= CLONE_PIDFD;
  pid_t* ctid = nullptr;
  if (async) {
    flags |= CLONE_VM | CLONE_CHILD_CLEARTID;
    ctid = const_cast<pid_t*>(reinterpret_cast<volatile pid_t*>(&plan.report->word));
    plan.report->word = 1;
  } else {
    flags |= CLONE_VM | CLONE_VFORK;
  }
  // No trampoline: a fork-style child (its own copy of memory, so errno writes are its own).
  if (!kHaveTrampoline) flags &= ~(CLONE_VM | CLONE_VFORK);
  plan.handlers_cleared = false;
  void* stack = take_stack();
  if (!stack) return -ENOMEM;
  long r = clone(child_main, static_cast<char*>(stack) + kChildStackSize, flags, &plan, pidfd,
                 nullptr, ctid);
  if (r < 0) r = -errno;
  if (async && r > 0 && kHaveTrampoline)
    plan.stack = stack;  // back in the pool once the child is past its exec
  else
    give_stack(stack);
  return r;
}

// `async`: no CLONE_VFORK; the child keeps its stack (plan.stack) after we return.
static long clone_once(ChildPlan& plan, CloneArgs& ca, bool async) {
  if (kHaveTrampoline) {
    void* stack = take_stack();
    if (!stack) return -ENOMEM;
    ca.stack = reinterpret_cast<uint64_t>(stack);
    ca.stack_size = kChildStackSize;
    long r = pardo_clone3_run(&ca, sizeof ca, child_main, &plan);
    if (async && r > 0)
      plan.stack = stack;  // back in the pool once the child is past its exec
    else
      give_stack(stack);  // vfork-style: the child has exec'd or exited already
    return r;
  }
  // No trampoline for this CPU: a fork-style clone3 (copies page tables, slower, same
  // semantics). The child runs child_main on its copy of our stack.
  ca.flags &= ~static_cast<uint64_t>(CLONE_VM | CLONE_VFORK);
  long r = syscall(SYS_clone3, &ca, sizeof ca);
  if (r == 0) syscall(SYS_exit, child_main(&plan));
  return r < 0 ? -errno : r;
}

static SpawnOutcome do_clone(ChildPlan& plan, int cgroup_fd, bool async) {
  SpawnOutcome out;
  int pidfd = -1;
  CloneArgs ca;
  long r = -ENOSYS;
  // cgroup_fd needs clone3; without it callers pass -1 (clone3_into_cgroup_supported).
  if (!start_features().clone3) r = clone_legacy(plan, &pidfd, async);
  for (int attempt = 0; attempt < 2 && start_features().clone3; ++attempt) {
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VM | CLONE_PIDFD;
    if (async) {
      ca.flags |= CLONE_CHILD_CLEARTID;
      ca.child_tid = reinterpret_cast<uint64_t>(&plan.report->word);
      plan.report->word = 1;
    } else {
      ca.flags |= CLONE_VFORK;
    }
    plan.handlers_cleared = g_clear_sighand.load();
    if (plan.handlers_cleared) ca.flags |= CLONE_CLEAR_SIGHAND;
    ca.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    ca.exit_signal = SIGCHLD;
    if (cgroup_fd >= 0) {
      ca.flags |= CLONE_INTO_CGROUP;
      ca.cgroup = static_cast<uint64_t>(cgroup_fd);
    }
    r = clone_once(plan, ca, async);
    if (r == -EINVAL && plan.handlers_cleared) {
      g_clear_sighand.store(false);
      continue;
    }
    break;
  }
  if (r < 0) {
    if (async) plan.report->word = 0;  // no child: nothing will clear it
    out.stage = STAGE_CLONE;
    out.err = static_cast<int>(-r);
    return out;
  }
  out.pid = static_cast<pid_t>(r);
  out.pidfd = pidfd;
  return out;
}

SpawnOutcome spawn_child(ChildPlan& plan, int cgroup_fd) {
  // A vfork-style child reports failure in plan.own; a fork-style one needs a pipe.
  int pipefd[2] = {-1, -1};
  if (!kHaveTrampoline && pipe2(pipefd, O_CLOEXEC) < 0) {
    SpawnOutcome o;
    o.stage = STAGE_CLONE;
    o.err = errno;
    return o;
  }
  plan.err_fd = pipefd[1];
  plan.report = nullptr;
  plan.own.stage = plan.own.err = 0;
  plan.finalize();
  SpawnOutcome out = do_clone(plan, cgroup_fd, false);
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
    stage = plan.own.stage;
    err = plan.own.err;
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

SpawnOutcome spawn_with_fds(ChildPlan& plan, int cgroup_fd) {
  std::vector<int> temps;
  SpawnOutcome o;
  if (int e = normalize_fds(plan.fds, &temps)) {
    o.stage = STAGE_FDS;
    o.err = e;
  } else {
    o = spawn_child(plan, cgroup_fd);
  }
  for (int fd : temps) close(fd);
  return o;
}

bool async_spawn_supported() { return kHaveTrampoline; }

SpawnOutcome spawn_child_async(ChildPlan& plan, int cgroup_fd, LaunchReport* report) {
  plan.err_fd = -1;
  plan.report = report;
  report->stage = report->err = 0;
  plan.finalize();
  return do_clone(plan, cgroup_fd, true);
}

bool finish_launch(ChildPlan& plan) {
  if (!plan.stack) return true;
  if (plan.report && plan.report->pending()) return false;
  give_stack(plan.stack);
  plan.stack = nullptr;
  return true;
}

bool LaunchReport::wait(int64_t timeout_ns) const {
  int64_t deadline = timeout_ns < 0 ? -1 : mono_ns() + timeout_ns;
  while (true) {
    int32_t w = __atomic_load_n(&word, __ATOMIC_ACQUIRE);
    if (w == 0) return true;
    struct timespec ts, *tsp = nullptr;
    if (deadline >= 0) {
      int64_t left = deadline - mono_ns();
      if (left <= 0) return false;
      ts.tv_sec = left / 1000000000;
      ts.tv_nsec = left % 1000000000;
      tsp = &ts;
    }
    // Not FUTEX_PRIVATE: the kernel's wake-up at exec or exit uses the shared form.
    syscall(SYS_futex, const_cast<int32_t*>(&word), FUTEX_WAIT, w, tsp, nullptr, 0);
  }
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

const StartFeatures& start_features() {
  // Probed once, at the first start: clone3 with a size below its smallest version is
  // EINVAL where the call exists, ENOSYS where it does not, EPERM where a seccomp filter
  // denies it outright. pidfd_open (5.3) stands for pidfds in general: clone's CLONE_PIDFD
  // came one release earlier, and a 5.2 kernel merely goes without them.
  static const StartFeatures f = [] {
    StartFeatures x;
    long r = syscall(SYS_clone3, nullptr, 0);
    x.clone3 = !(r < 0 && (errno == ENOSYS || errno == EPERM));
    long fd = syscall(SYS_pidfd_open, getpid(), 0);
    x.pidfd = fd >= 0;
    if (fd >= 0) close(static_cast<int>(fd));
    return x;
  }();
  return f;
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
