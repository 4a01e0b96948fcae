// pardo-shepherd --launcher: the shepherd rung's launcher, one per supervisor, started once
// (rungs/shepherd.cpp is the supervisor's side). Its stdin is a stream socket whose other
// end only the supervisor holds. The cgroup and pgroup rungs have a launcher of their own,
// which starts their tasks without keepers (LAUNCH_DIRECT, below; rungs/direct.hpp).
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
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstdint>

#include "raw/rawmsg.hpp"
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

  long err;
  if (int stage = apply_task_settings(h, cwd, kNiceUnknown, &err)) keeper_fail(stage, err);
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

// A request's strings, read after its header: in the room given when they fit there with
// the pointers split() lays out before them, else in a mapping of their own.
struct Strings {
  char** ptrs = nullptr;  // room for the pointers
  char* text = nullptr;   // the strings; nullptr: no memory for them (read and dropped)
  char* mapped = nullptr;  // their own mapping (to unmap), of mapped_size bytes
  size_t mapped_size = 0;
};

// Read h's strings into *s, whatever happens, so that the stream stays in step: false
// when it could not be read on.
bool read_strings(const LaunchRequest& h, char* room, size_t room_size, Strings* s) {
  size_t nptrs = static_cast<size_t>(h.nexec) + h.nargv + h.nenv + 3;
  size_t need = (h.size + nptrs * sizeof(char*) + 15) & ~size_t{15};
  char* mem = room;
  if (need > room_size) {
    long m = sys(SYS_mmap, nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mem = m < 0 && m > -4096 ? nullptr : reinterpret_cast<char*>(m);
    if (mem) {
      s->mapped = mem;
      s->mapped_size = need;
    }
  }
  s->ptrs = reinterpret_cast<char**>(mem);
  s->text = mem ? mem + nptrs * sizeof(char*) : nullptr;
  if (s->text) return read_all(s->text, h.size);
  char sink[4096];
  for (size_t left = h.size; left;) {
    size_t k = left < sizeof sink ? left : sizeof sink;
    if (!read_all(sink, k)) return false;
    left -= k;
  }
  return true;
}

// What every request's header must say (the fds it came with are checked by each kind).
bool header_sane(const LaunchRequest& h) {
  return h.magic == kLaunchMagic && h.size <= kLaunchMaxSize && h.nfds >= 0 && h.nfds <= kLaunchMaxFds &&
         h.nexec >= 0 && h.nargv >= 0 && h.nenv >= 0;
}

// ---- LAUNCH_DIRECT: the cgroup and pgroup rungs' tasks, started without a keeper ----
//
// The task is cloned from this process rather than from the supervisor for its max_rss:
// a child sharing (or copying) the address space of the Python process until its exec has
// that space's peak RSS carried into its own figure by the exec; ours is a few pages. It
// is cloned with CLONE_PARENT, so it is the supervisor's own child (the supervisor opens
// its pidfd, waits for it and reaps it as if it had cloned it).
//
// Nobody waits for anybody: the child runs in our memory (CLONE_VM) on a slot of its own
// (stack, request, strings) until its exec, while we answer at once with its pid (a
// STARTED reply) and read the next request. The kernel clears the slot's word when the
// child has exec'd or exited (CLONE_CHILD_CLEARTID), and the slot is free again. A child
// that cannot exec says why itself, on our socket (a FAILED reply), before it exits 127.
// Where clone3 is refused the child is a fork-style copy of our few pages instead, and we
// wait for its exec (CLONE_VFORK).

#ifndef CLONE_PARENT
#define CLONE_PARENT 0x00008000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLONE_CHILD_CLEARTID
#define CLONE_CHILD_CLEARTID 0x00200000
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

// One child between clone and exec: what it reads, and its stack.
constexpr int kDirectSlots = 32;
constexpr size_t kDirectStack = 32 * 1024;
constexpr size_t kDirectStrings = 16 * 1024;  // bigger requests get a mapping of their own
struct DirectSlot {
  alignas(4) volatile int32_t word;  // != 0: its child may be before its exec
  LaunchRequest h;
  int fds[kLaunchMaxFds + 1];
  char** execs;
  char** args;
  char** envp;
  const char* cwd;
  int cgroup_fd;  // -1: none
  bool placed;    // clone3 put the child into the cgroup already
  char* mapped;   // the strings' own mapping (else `strings`), unmapped once the slot is free
  size_t mapped_size;
  alignas(16) char strings[kDirectStrings];
  alignas(64) char stack[kDirectStack];
};
DirectSlot g_direct[kDirectSlots];

// The task says why it could not exec, on our socket (its copy of it: `sock`), and exits.
[[noreturn]] void direct_fail(const DirectSlot& d, int sock, int stage, long err) {
  LaunchReply r{d.h.task, static_cast<int32_t>(sys(SYS_getpid)), stage, static_cast<int32_t>(err),
                LAUNCH_REPLY_FAILED, 0, 0};
  const char* p = reinterpret_cast<const char*>(&r);
  for (size_t left = sizeof r; left;) {
    long n = sys(SYS_write, sock, p, left);
    if (n == -EINTR) continue;
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
  leave(127);
}

// The task, between clone and exec: raw system calls only (it shares our memory).
int direct_child(void* p) {
  const DirectSlot& d = *static_cast<const DirectSlot*>(p);
  const LaunchRequest& h = d.h;
  int top = 2;
  for (int i = 0; i < h.nfds; ++i) top = h.targets[i] > top ? h.targets[i] : top;
  // Our socket, kept above the task's fds until the exec closes it: the way to report.
  long sock = sys(SYS_fcntl, kSock, F_DUPFD_CLOEXEC, top + 1);
  if (sock < 0) leave(127);  // no fd left to report with: the supervisor sees exit 127
  auto check = [&](long r, int stage) {
    if (r < 0) direct_fail(d, static_cast<int>(sock), stage, -r);
  };
  // Dispositions: ours are the defaults but SIGPIPE (launcher_main); the task starts with
  // what its caller ignored, as a child of the caller's own would across its exec.
  set_disposition(SIGPIPE, reinterpret_cast<void*>(SIG_DFL));
  for (int s = 1; s <= 64; ++s)
    if (h.ignored & (1ULL << (s - 1))) set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  unsigned long none = 0;
  sys(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
  if (d.cgroup_fd >= 0 && !d.placed) {
    // No clone3 into the cgroup here: the child moves itself before anything else.
    long fd = sys(SYS_openat, d.cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    check(fd, STAGE_CGROUP);
    long w = sys(SYS_write, fd, "0", 1);
    check(w == 0 ? -EIO : w, STAGE_CGROUP);
    sys(SYS_close, fd);
  }
  check(sys(SYS_setsid), STAGE_SESSION);
  // The PDEATHSIG refers to our parent thread, which CLONE_PARENT made the supervisor's
  // thread: the task dies with it, as one it cloned itself would.
  sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  if (h.flags & LAUNCH_TELL_GUARDIAN) {
    // Before the program runs (and can fork), so that no process of its group is ever
    // unknown to the guardian; before the fds move, which may reuse that fd number.
    int32_t pid = static_cast<int32_t>(sys(SYS_getpid));
    while (sys(SYS_write, kLaunchGuardianFd, &pid, sizeof pid) == -EINTR) {
    }
  }
  // The task's fds: first above every target, then into place; every other fd of ours
  // (socket, signalfd, other fds received) goes at the exec.
  int moved[kLaunchMaxFds];
  for (int i = 0; i < h.nfds; ++i) {
    long m = sys(SYS_fcntl, d.fds[i], F_DUPFD_CLOEXEC, top + 1);
    check(m, STAGE_FDS);
    moved[i] = static_cast<int>(m);
  }
  for (int fd = 0; fd <= top; ++fd) sys(SYS_close, fd);
  for (int i = 0; i < h.nfds; ++i) check(sys(SYS_dup3, moved[i], h.targets[i], 0), STAGE_FDS);
  check(cloexec_from(top + 1, static_cast<int>(sock)), STAGE_FDS);
  // Our children start at nice 0 (SCHED_RESET_ON_FORK, when we raised ourselves) or at
  // the supervisor's own base niceness (when we could not): base_nice is right either way.
  long err;
  if (int stage = apply_task_settings(h, d.cwd, 0, &err)) direct_fail(d, static_cast<int>(sock), stage, err);
  direct_fail(d, static_cast<int>(sock), STAGE_EXEC, exec_search(d.execs, d.args, d.envp));
}

#if defined(__x86_64__) || defined(__aarch64__)
extern "C" long pardo_clone3_run(void* args, unsigned long size, int (*fn)(void*), void* arg);
extern "C" long pardo_clone_run(unsigned long flags, void* stack_top, int (*fn)(void*), void* arg,
                                int* child_tid);
constexpr bool kDirectAsync = true;
#else
constexpr bool kDirectAsync = false;
#endif
bool g_clone3_refused = false;       // ENOSYS/EPERM: before Linux 5.3, Docker's seccomp profile
bool g_into_cgroup_refused = false;  // EINVAL/E2BIG: clone3 without CLONE_INTO_CGROUP (5.3-5.6)
bool g_clone_vm_refused = false;     // and clone() sharing our memory too: fork-style children

bool slot_free(DirectSlot& d) {
  if (__atomic_load_n(&d.word, __ATOMIC_ACQUIRE) != 0) return false;
  if (d.mapped) {
    sys(SYS_munmap, d.mapped, d.mapped_size);
    d.mapped = nullptr;
  }
  return true;
}

// A free slot: the lowest (so that few pages are ever touched), else wait for the first
// child to get past its exec.
DirectSlot& take_slot() {
  while (true) {
    for (DirectSlot& d : g_direct)
      if (slot_free(d)) return d;
    int32_t w = g_direct[0].word;
    // Not FUTEX_PRIVATE: the kernel's wake-up at exec or exit uses the shared form.
    if (w != 0) sys(SYS_futex, &g_direct[0].word, 0 /* FUTEX_WAIT */, w, nullptr, nullptr, 0);
  }
}

// Clone the task of slot d as the supervisor's child: its pid, or -errno; *pidfd its
// pidfd (-1 if none could be had).
long clone_direct(DirectSlot& d, int* pidfd) {
  *pidfd = -1;
  if (kDirectAsync && !g_clone3_refused) {
    struct {
      uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
          set_tid, set_tid_size, cgroup;
    } ca{};
    // exit_signal stays 0: with CLONE_PARENT the child gets ours (SIGCHLD), as if the
    // supervisor had cloned it.
    ca.flags = CLONE_PARENT | CLONE_VM | CLONE_CHILD_CLEARTID | CLONE_PIDFD;
    ca.child_tid = reinterpret_cast<uint64_t>(&d.word);
    ca.pidfd = reinterpret_cast<uint64_t>(pidfd);
    ca.stack = reinterpret_cast<uint64_t>(d.stack);
    ca.stack_size = sizeof d.stack;
    d.placed = d.cgroup_fd >= 0 && !g_into_cgroup_refused;
    if (d.placed) {
      ca.flags |= CLONE_INTO_CGROUP;
      ca.cgroup = static_cast<uint64_t>(d.cgroup_fd);
    }
    d.word = 1;
    long pid = pardo_clone3_run(&ca, sizeof ca, direct_child, &d);
    if (d.placed && (pid == -EINVAL || pid == -E2BIG)) {
      g_into_cgroup_refused = true;
      d.placed = false;
      ca.flags &= ~static_cast<uint64_t>(CLONE_INTO_CGROUP);
      ca.cgroup = 0;
      pid = pardo_clone3_run(&ca, sizeof ca, direct_child, &d);
    }
    if (pid < 0) d.word = 0;  // no child: nothing will clear it
    if (pid != -ENOSYS && pid != -EPERM) return pid;
    g_clone3_refused = true;
  }
  // clone3 refused: the same child through clone(), which has no CLONE_INTO_CGROUP (the
  // child moves itself). Its exit signal is ours whatever we say (CLONE_PARENT).
  d.placed = false;
  long pid = -ENOSYS;
#if defined(__x86_64__) || defined(__aarch64__)
  if (!g_clone_vm_refused) {
    d.word = 1;
    pid = pardo_clone_run(CLONE_PARENT | CLONE_VM | CLONE_CHILD_CLEARTID, d.stack + sizeof d.stack,
                          direct_child, &d, const_cast<int32_t*>(&d.word));
    if (pid < 0) d.word = 0;
    if (pid == -ENOSYS || pid == -EPERM || pid == -EINVAL) g_clone_vm_refused = true;
  }
#else
  g_clone_vm_refused = true;
#endif
  // Else a fork-style child (it copies our few pages), still the supervisor's; we wait for
  // its exec (CLONE_VFORK), so the slot is free after.
  if (g_clone_vm_refused) {
    pid = sys(SYS_clone, CLONE_PARENT | CLONE_VFORK, 0, 0, 0, 0);
    if (pid == 0) direct_child(&d);
  }
  // Not reused before the supervisor reaps it, which it cannot before our answer.
  if (pid > 0) {
    long fd = sys(SYS_pidfd_open, pid, 0);
    *pidfd = fd >= 0 ? static_cast<int>(fd) : -1;
  }
  return pid;
}

// One STARTED reply, with the task's pidfd (>= 0) as SCM_RIGHTS.
void reply(uint64_t task, int32_t pid, int32_t stage, int32_t err, int pidfd = -1, int32_t flags = 0) {
  LaunchReply r{task, pid, stage, err, LAUNCH_REPLY_STARTED, flags | (pidfd >= 0 ? REPLY_PIDFD : 0), 0};
  struct iovec iov{&r, sizeof r};
  struct msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(struct cmsghdr) char cbuf[fds_space(1)];
  attach_fds(&mh, cbuf, &pidfd, pidfd >= 0 ? 1 : 0);
  // Whole or not at all (a reply split by a signal is resent from where it stopped).
  size_t sent = 0;
  while (sent < sizeof r) {
    long n = sys(SYS_sendmsg, kSock, &mh, MSG_NOSIGNAL);
    if (n == -EINTR) continue;
    if (n <= 0) return;  // the supervisor is gone: EOF on the socket ends us next
    sent += static_cast<size_t>(n);
    iov.iov_base = reinterpret_cast<char*>(&r) + sent;
    iov.iov_len = sizeof r - sent;
    mh.msg_control = nullptr;
    mh.msg_controllen = 0;
  }
}

// A LAUNCH_DIRECT request whose header (and fds) serve_one has read: read its strings,
// start its task, answer. False when the stream cannot be read on.
bool serve_direct(const LaunchRequest& h, int* fds, int nrecv) {
  const int want = h.nfds + ((h.flags & LAUNCH_CGROUP) ? 1 : 0);
  bool ok = header_sane(h) && nrecv == want;
  if (!ok) {
    reply(h.task, 0, STAGE_HELPER, EPROTO);
    for (int i = 0; i < nrecv; ++i) sys(SYS_close, fds[i]);
    return false;
  }
  DirectSlot& d = take_slot();
  d.h = h;
  for (int i = 0; i < nrecv; ++i) d.fds[i] = fds[i];
  d.cgroup_fd = (h.flags & LAUNCH_CGROUP) ? fds[h.nfds] : -1;
  Strings st;
  bool read_ok = read_strings(h, d.strings, sizeof d.strings, &st);
  d.mapped = st.mapped;
  d.mapped_size = st.mapped_size;
  char* cwd = nullptr;
  if (!read_ok || (st.text && !split(d.h, st.text, st.ptrs, &d.execs, &d.args, &d.envp, &cwd))) {
    reply(h.task, 0, STAGE_HELPER, EPROTO);
  } else if (!st.text) {
    reply(h.task, 0, STAGE_CLONE, ENOMEM);
  } else {
    d.cwd = cwd;
    int pidfd;
    long pid = clone_direct(d, &pidfd);
    if (pid > 0) {
      int32_t flags = 0;
      if ((h.flags & LAUNCH_WATCH) && pidfd >= 0) {
        struct epoll_event ev{};
        ev.events = EPOLLIN | EPOLLONESHOT;
        ev.data.u64 = h.watch_key;
        if (sys(SYS_epoll_ctl, kLaunchEpollFd, EPOLL_CTL_ADD, pidfd, &ev) == 0) flags = REPLY_WATCHED;
      }
      reply(h.task, static_cast<int32_t>(pid), 0, 0, pidfd, flags);
      if (pidfd >= 0) sys(SYS_close, pidfd);  // the supervisor has it now (in flight)
    } else {
      reply(h.task, 0, STAGE_CLONE, static_cast<int32_t>(-pid));
    }
  }
  // The child has its own copies of the fds (no CLONE_FILES).
  for (int i = 0; i < nrecv; ++i) sys(SYS_close, fds[i]);
  return read_ok;
}

// One request: read it, fork its keeper, keep its status pipe. False when the socket
// says the supervisor is gone (or the stream cannot be trusted any more).
bool serve_one(long self) {
  LaunchRequest h;
  alignas(struct cmsghdr) char cbuf[fds_space(kLaunchMaxFds + 3)];
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
  const int* p;
  for (int i = 0, k = received_fds(&mh, &p); i < k; ++i) {
    if (nrecv < kLaunchMaxFds + 3)
      fds[nrecv++] = p[i];
    else
      sys(SYS_close, p[i]);
  }
  bool ok = (mh.msg_flags & MSG_CTRUNC) == 0 &&
            read_all(reinterpret_cast<char*>(&h) + n, sizeof h - static_cast<size_t>(n));
  // A kept keeper for the socket that came with it (keeper_pool.cpp).
  if (ok && h.magic == kKeeperMagic) return serve_keeper_request(fds, nrecv, self);
  if (ok && (h.flags & LAUNCH_DIRECT)) return serve_direct(h, fds, nrecv);
  constexpr int specials = 2;  // the status and control pipes
  ok = ok && header_sane(h) && nrecv == h.nfds + specials;
  if (!ok) {
    // A stream out of step cannot be read on: say so to this task if we can, and stop.
    if (nrecv > h.nfds && h.nfds >= 0 && h.nfds <= kLaunchMaxFds) keeper_report(fds[h.nfds], EPROTO);
    for (int i = 0; i < nrecv; ++i) sys(SYS_close, fds[i]);
    return false;
  }
  int status_w = fds[h.nfds];
  Strings st;
  bool read_ok = read_strings(h, g_small, sizeof g_small, &st);
  char **execs, **args, **envp, *cwd;
  long pid = -ENOMEM;
  if (!read_ok) {
    pid = -EPROTO;
  } else if (st.text && !split(h, st.text, st.ptrs, &execs, &args, &envp, &cwd)) {
    pid = -EPROTO;
  } else if (st.text) {
    pid = sys(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) become_keeper(h, fds, self, execs, args, envp, cwd);
  }
  if (st.mapped) sys(SYS_munmap, st.mapped, st.mapped_size);
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
