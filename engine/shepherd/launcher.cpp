// pardo-shepherd --launcher: the shepherd rung's launcher, one per supervisor, started once
// (rungs/shepherd.cpp is the supervisor's side). Its stdin is a stream socket whose other
// end only the supervisor holds.
//
//   supervisor ──LaunchRequest + fds (SCM_RIGHTS)──► launcher ──fork──► keeper (keeper.cpp)
//       ▲                                               │                  │ fork+exec
//       └──── status pipe: STARTED, LEADER_EXIT, TREE_GONE (keeper), ──────┘   task
//             then KEEPER_EXIT (launcher, once it reaped the keeper)
//
// A keeper used to be a program of its own, exec'd per task: a second program start per
// task. Forked from this process instead -- which never links libc, so its address space
// is a few pages -- a keeper costs a fork of those pages. The launcher keeps nothing of a
// task but the write end of its status pipe, until it has reaped the keeper and said how it
// ended: so the supervisor learns of a keeper that died without a word, without being its
// parent.
//
// Most tasks skip the launcher: a request with magic kKeeperMagic brings only a socket,
// and the launcher forks a kept keeper for it (keeper_pool.cpp), which serves task after
// task on that socket; the launcher only reaps it (its end shows on the socket).
//
// It exits at EOF on its socket: the supervisor shut down or died (then each keeper kills
// its tree: EOF on its control pipe, and its PDEATHSIG once we are gone). If the launcher
// itself dies, every keeper gets its PDEATHSIG, says it was orphaned, and kills its tree;
// the supervisor sees the socket close and starts a new launcher for the next task.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstdint>

#include "shepherd/protocol.hpp"
#include "shepherd/shepherd.hpp"
#include "spawn.hpp"

namespace pardo {
namespace shepherd {
namespace {

constexpr int kSock = 0;

// The keepers alive: pid -> the write end of their task's status pipe. Open addressing,
// static (no allocator); a full table only loses the KEEPER_EXIT report of the tasks that
// do not fit (their pipes then close at once: the supervisor sees end-of-file instead).
constexpr uint32_t kSlots = 1u << 14;
struct Slot {
  int32_t pid;  // 0: free; -1: deleted
  int32_t fd;
};
Slot g_slots[kSlots];

bool remember(int32_t pid, int32_t fd) {
  uint32_t h = static_cast<uint32_t>(pid) * 2654435761u;
  for (uint32_t i = 0; i < kSlots; ++i) {
    Slot& s = g_slots[(h + i) & (kSlots - 1)];
    if (s.pid <= 0) {
      s.pid = pid;
      s.fd = fd;
      return true;
    }
  }
  return false;
}

int32_t forget(int32_t pid) {
  uint32_t h = static_cast<uint32_t>(pid) * 2654435761u;
  for (uint32_t i = 0; i < kSlots; ++i) {
    Slot& s = g_slots[(h + i) & (kSlots - 1)];
    if (s.pid == 0) return -1;
    if (s.pid == pid) {
      s.pid = -1;
      return s.fd;
    }
  }
  return -1;
}

void put(int fd, const ShepherdMsg& m) {
  while (sys(SYS_write, fd, &m, sizeof m) == -EINTR) {
  }
}

// A task whose keeper could not be started: why, on its status pipe.
void keeper_report(int fd, int32_t err, int32_t stage = STAGE_HELPER) {
  ShepherdMsg m{MSG_EXEC_FAILED, stage, err, 0, 0, 0, 0};
  put(fd, m);
}

// Read exactly n bytes (the socket is blocking). False at EOF or on an error.
bool read_all(void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    long r = sys(SYS_read, kSock, c, n);
    if (r == -EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Where a request's strings go: a static buffer for the usual few KiB (no system call),
// a mapping of its own for a bigger one, unmapped once the keeper is forked so that the
// next keepers do not carry its pages.
alignas(16) char g_small[64 * 1024];

// The fd a failing keeper reports through, as it moves its fds into place.
int g_report = -1;

[[noreturn]] void keeper_fail(int stage, long err) {
  ShepherdMsg m{MSG_EXEC_FAILED, stage, static_cast<int32_t>(err), 0, 0, 0, 0};
  if (g_report >= 0) put(g_report, m);
  leave(1);
}

inline void check(long r, int stage) {
  if (r < 0) keeper_fail(stage, -r);
}

// In the forked child: put the task's fds where the task expects them, the status and
// control pipes just above, close everything else (our socket, our signalfd, the other
// tasks' status pipes), apply the task's settings, and become its keeper.
[[noreturn]] void become_keeper(const LaunchRequest& h, const int* fds, long parent, char** execs,
                                char** args, char** envp, const char* cwd) {
  int nfds = h.nfds;
  constexpr int specials = 2;  // the status and control pipes
  int top = 2;
  for (int i = 0; i < nfds; ++i) top = h.targets[i] > top ? h.targets[i] : top;
  const int status_fd = top + 1, ctl_fd = top + 2, base = top + 1 + specials;
  g_report = fds[nfds];
  int dups[kLaunchMaxFds + specials];
  for (int i = 0; i < nfds + specials; ++i) {
    long d = sys(SYS_fcntl, fds[i], F_DUPFD, base);
    check(d, STAGE_FDS);
    dups[i] = static_cast<int>(d);
    if (i == nfds) g_report = dups[i];
  }
  // Below `base` only the task's fds and the two pipes may stay: the keeper passes on to
  // the task whatever it holds below its status fd.
  for (int fd = 0; fd < base; ++fd) sys(SYS_close, fd);
  for (int i = 0; i < nfds; ++i) check(sys(SYS_dup3, dups[i], h.targets[i], 0), STAGE_FDS);
  check(sys(SYS_dup3, dups[nfds], status_fd, 0), STAGE_FDS);
  g_report = status_fd;
  check(sys(SYS_dup3, dups[nfds + 1], ctl_fd, 0), STAGE_FDS);
  check(close_from(base), STAGE_FDS);

  if (h.flags & LAUNCH_CWD) check(sys(SYS_chdir, cwd), STAGE_CHDIR);
  if (h.flags & LAUNCH_CPUS) check(sys(SYS_sched_setaffinity, 0, sizeof h.cpus, h.cpus), STAGE_AFFINITY);
  if (h.flags & LAUNCH_NICE)
    check(sys(SYS_setpriority, PRIO_PROCESS, 0, h.nice), STAGE_NICE);
  else
    sys(SYS_setpriority, PRIO_PROCESS, 0, h.base_nice);  // lowering is always allowed
  struct {
    uint64_t cur, max;
  } rl;
  if (h.flags & LAUNCH_RESTORE_NOFILE) {
    // Unchecked: only the soft limit was raised, so putting it back is always permitted.
    rl = {h.nofile_cur, h.nofile_max};
    sys(SYS_prlimit64, 0, RLIMIT_NOFILE, &rl, nullptr);
  }
  if (h.rlimit_as > 0) {
    rl.cur = rl.max = static_cast<uint64_t>(h.rlimit_as);
    check(sys(SYS_prlimit64, 0, RLIMIT_AS, &rl, nullptr), STAGE_RLIMIT);
  }
  KeeperArgs k{status_fd, ctl_fd, (h.flags & LAUNCH_LINGER) != 0, h.ignored,
               parent, execs, args, envp};
  run_keeper(k);
}

// Lay out pointers to the request's NUL-terminated strings: nexec candidates, argv, the
// environment, each list NULL-terminated, then the working directory. False when the
// strings do not match the counts.
bool split(const LaunchRequest& h, char* s, char** ptrs, char*** execs, char*** args, char*** envp,
           char** cwd) {
  char* end = s + h.size;
  int counts[3] = {h.nexec, h.nargv, h.nenv};
  char*** lists[3] = {execs, args, envp};
  for (int l = 0; l < 3; ++l) {
    *lists[l] = ptrs;
    for (int i = 0; i < counts[l]; ++i) {
      if (s >= end) return false;
      *ptrs++ = s;
      while (s < end && *s) ++s;
      if (s == end) return false;
      ++s;
    }
    *ptrs++ = nullptr;
  }
  *cwd = nullptr;
  if (h.flags & LAUNCH_CWD) {
    if (s >= end || end[-1] != '\0') return false;
    *cwd = s;
  }
  return h.nexec > 0 && h.nargv > 0;
}

// One request: read it, fork its keeper, keep its status pipe. False when the socket
// says the supervisor is gone (or the stream cannot be trusted any more).
bool serve_one(long self) {
  LaunchRequest h;
  alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * (kLaunchMaxFds + 3))];
  struct iovec iov{&h, sizeof h};
  struct msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  long n;
  while ((n = sys(SYS_recvmsg, kSock, &mh, MSG_CMSG_CLOEXEC)) == -EINTR) {
  }
  if (n <= 0) return false;
  int fds[kLaunchMaxFds + 3];
  int nrecv = 0;
  // One SCM_RIGHTS message is all the supervisor sends (CMSG_NXTHDR would be a libc call).
  if (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
    int k = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
    for (int i = 0; i < k; ++i) {
      if (nrecv < kLaunchMaxFds + 3)
        fds[nrecv++] = p[i];
      else
        sys(SYS_close, p[i]);
    }
  }
  bool ok = (mh.msg_flags & MSG_CTRUNC) == 0 &&
            read_all(reinterpret_cast<char*>(&h) + n, sizeof h - static_cast<size_t>(n));
  // A kept keeper for the socket that came with it (keeper_pool.cpp).
  if (ok && h.magic == kKeeperMagic) return serve_keeper_request(fds, nrecv, self);
  constexpr int specials = 2;  // the status and control pipes
  ok = ok && h.magic == kLaunchMagic && h.size <= kLaunchMaxSize && h.nfds >= 0 &&
       h.nfds <= kLaunchMaxFds && nrecv == h.nfds + specials &&
       h.nexec >= 0 && h.nargv >= 0 && h.nenv >= 0;
  if (!ok) {
    // A stream out of step cannot be read on: say so to this task if we can, and stop.
    if (nrecv > h.nfds && h.nfds >= 0 && h.nfds <= kLaunchMaxFds) keeper_report(fds[h.nfds], EPROTO);
    for (int i = 0; i < nrecv; ++i) sys(SYS_close, fds[i]);
    return false;
  }
  int status_w = fds[h.nfds];
  size_t nptrs = static_cast<size_t>(h.nexec) + h.nargv + h.nenv + 3;
  size_t need = h.size + nptrs * sizeof(char*);
  need = (need + 15) & ~size_t{15};
  char* mem = g_small;
  bool mapped = need > sizeof g_small;
  if (mapped) {
    long m = sys(SYS_mmap, nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mem = m < 0 && m > -4096 ? nullptr : reinterpret_cast<char*>(m);
  }
  char** ptrs = reinterpret_cast<char**>(mem);
  char* strings = mem ? mem + nptrs * sizeof(char*) : nullptr;
  // Read the strings whatever happens, so that the stream stays in step.
  bool read_ok = true;
  if (strings) {
    read_ok = read_all(strings, h.size);
  } else {
    char sink[4096];
    for (size_t left = h.size; left && read_ok;) {
      size_t k = left < sizeof sink ? left : sizeof sink;
      read_ok = read_all(sink, k);
      left -= k;
    }
  }
  char **execs, **args, **envp, *cwd;
  long pid = -ENOMEM;
  if (!read_ok) {
    pid = -EPROTO;
  } else if (strings && !split(h, strings, ptrs, &execs, &args, &envp, &cwd)) {
    pid = -EPROTO;
  } else if (strings) {
    pid = sys(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) become_keeper(h, fds, self, execs, args, envp, cwd);
  }
  if (mapped && mem) sys(SYS_munmap, mem, need);
  for (int i = 0; i < nrecv; ++i)
    if (fds[i] != status_w) sys(SYS_close, fds[i]);
  if (pid < 0) {
    keeper_report(status_w, static_cast<int32_t>(-pid), pid == -EPROTO ? STAGE_HELPER : STAGE_CLONE);
    sys(SYS_close, status_w);
  } else if (!remember(static_cast<int32_t>(pid), status_w)) {
    sys(SYS_close, status_w);
  }
  return read_ok;
}

// Reap every keeper that has exited and tell its supervisor how it ended.
void reap_keepers() {
  while (true) {
    int st = 0;
    struct rusage ru{};
    long p = sys(SYS_wait4, -1, &st, WNOHANG, &ru);
    if (p == -EINTR) continue;
    if (p <= 0) return;
    int32_t fd = forget(static_cast<int32_t>(p));
    if (fd < 0) continue;
    ShepherdMsg m{MSG_KEEPER_EXIT, st, 0, 0, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss};
    put(fd, m);
    sys(SYS_close, fd);
  }
}

}  // namespace

bool split_request(const LaunchRequest& h, char* s, char** ptrs, char*** execs, char*** args,
                   char*** envp, char** cwd) {
  return split(h, s, ptrs, execs, args, envp, cwd);
}

int launcher_main(char** envp) {
  // What the caller ignored when it started us we inherited (an exec keeps SIG_IGN): start
  // from the defaults, so that each task gets the caller's ignored signals of the moment
  // (LaunchRequest::ignored) and nothing else.
  for (int s = 1; s <= 64; ++s)
    if (s != SIGKILL && s != SIGSTOP) set_disposition(s, reinterpret_cast<void*>(SIG_DFL));
  // A vanished supervisor must not kill us by a write to a task's closed status pipe.
  set_disposition(SIGPIPE, reinterpret_cast<void*>(SIG_IGN));
  unsigned long mask = 1UL << (SIGCHLD - 1);
  sys(SYS_rt_sigprocmask, SIG_BLOCK, &mask, nullptr, sizeof mask);
  long sigfd = sys(SYS_signalfd4, -1, &mask, sizeof mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0) {
    say("pardo-shepherd --launcher: signalfd failed\n");
    return 1;
  }
  // Tasks start as fast as this process is scheduled: where permitted, ahead of busy
  // ones, as the supervisor thread is. Never inherited (SCHED_RESET_ON_FORK): each keeper
  // sets the task's own niceness, and raises itself only once its task is started.
  bool realtime = true;
  for (char** e = envp; *e; ++e)
    if (after(*e, "PARDO_NO_REALTIME=")) realtime = false;
  raise_priority(realtime);
  long self = sys(SYS_getpid);
  struct pollfd pfd[2] = {{kSock, POLLIN, 0}, {static_cast<int>(sigfd), POLLIN, 0}};
  while (true) {
    long k = wait_fds(pfd, 2, -1);
    if (k == -EINTR) continue;
    if (k < 0) return 1;
    if (pfd[1].revents) {
      struct signalfd_siginfo si;
      while (sys(SYS_read, sigfd, &si, sizeof si) > 0) {
      }
      reap_keepers();
    }
    if (pfd[0].revents && !serve_one(self)) return 0;
  }
}

}  // namespace shepherd
}  // namespace pardo
