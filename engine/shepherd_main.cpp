// pardo-shepherd: the per-task keeper of the shepherd rung, and the cgroup rung's guardian.
//
//   pardo-shepherd --task --status-fd=N --ctl-fd=M [--linger] --exec=PATH... -- ARGV...
//     Becomes a child subreaper, starts ARGV in a new session, reports (STARTED,
//     LEADER_EXIT, TREE_GONE) on fd N, obeys T/K bytes on fd M. When the leader exits it
//     kills what is left of the tree (unless --linger) and exits once waitpid() says ECHILD:
//     its exit means the whole tree is gone. EOF on fd M, SIGTERM or SIGHUP (its
//     PDEATHSIG) mean the supervisor is gone: kill everything and exit.
//   pardo-shepherd --guardian=CGROUP_DIR
//     Waits for EOF on stdin (the supervisor process died or shut down), then kills every
//     process in CGROUP_DIR and removes it.
//   pardo-shepherd --guardian-pgroups
//     The pgroup rung's guardian: reads int32 records on stdin, +PGID when a task's group
//     is made and -PGID when the supervisor is done with it; at EOF it SIGKILLs every group
//     still on its list (the leaders die of PDEATHSIG, but not what they started).
//
// One is exec'd per task of the shepherd rung, so its start-up is on that rung's hot path:
// it is written against the kernel alone (rawsys.hpp) and, on x86-64, built without libc
// (PARDO_FREESTANDING: its own _start), which saves libc's start-up (on a virtual machine
// mostly CPUID probes, each a trap: most of the exec's cost). Elsewhere it links libc and
// uses only main() from it.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "rawproc.hpp"
#include "shepherd.hpp"
#include "spawn.hpp"

using namespace pardo;

namespace {

// ------------------------------------------------------------------ the little we need

size_t str_len(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

void say(const char* s) { sys(SYS_write, 2, s, str_len(s)); }

int64_t now_ms() {
  struct timespec ts;
  sys(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Wait for events on fds, up to timeout_ms (-1: no limit).
long wait_fds(struct pollfd* fds, int n, int timeout_ms) {
  struct timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  return sys(SYS_ppoll, fds, n, timeout_ms < 0 ? nullptr : &ts, nullptr, 8);
}

void set_disposition(int sig, void* handler) {
  KernelSigaction sa{handler, 0, nullptr, 0};
  sys(SYS_rt_sigaction, sig, &sa, nullptr, sizeof(unsigned long));
}

// ------------------------------------------------------------------ the task's tree

int g_status_fd = -1;
long g_leader = -1;
bool g_leader_reaped = false;
bool g_linger = false;

int64_t tv_us(const struct timeval& tv) { return static_cast<int64_t>(tv.tv_sec) * 1000000 + tv.tv_usec; }

void send(const ShepherdMsg& m) {
  if (g_status_fd < 0) return;
  while (sys(SYS_write, g_status_fd, &m, sizeof m) == -EINTR) {
  }
}

[[noreturn]] void leave(int code) {
  for (;;) sys(SYS_exit_group, code);
}

[[noreturn]] void finish() {
  struct rusage ru{};
  sys(SYS_getrusage, RUSAGE_CHILDREN, &ru);
  ShepherdMsg m{MSG_TREE_GONE, 0, 0, 0, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss};
  send(m);
  leave(0);
}

// Reap every child that has exited. Returns false once there are no children left.
bool reap_all(bool* leader_just_exited) {
  while (true) {
    int st = 0;
    struct rusage ru{};
    long p = sys(SYS_wait4, -1, &st, WNOHANG, &ru);
    if (p > 0) {
      if (p == g_leader) {
        g_leader_reaped = true;
        *leader_just_exited = true;
        ShepherdMsg m{MSG_LEADER_EXIT, st, 0, 0, tv_us(ru.ru_utime), tv_us(ru.ru_stime), ru.ru_maxrss};
        send(m);
      }
      continue;
    }
    if (p == 0) return true;
    if (p == -EINTR) continue;
    return p != -ECHILD;
  }
}

// Our descendants, found through /proc/PID/task/TID/children (or, where the kernel lacks
// those files, the parent links of every process). At most kMaxPids a round: the kill
// loop repeats until none is left, and orphans of killed processes come to us.
constexpr int kMaxPids = 32768;
long g_pids[kMaxPids];
int g_npids = 0;

void add_pid(long p) {
  // Never 0 or -1 (which kill() reads as "our group" or "everyone"), nor init.
  if (p > 1 && g_npids < kMaxPids) g_pids[g_npids++] = p;
}

// Parent links of every process, for kernels without children files.
constexpr int kMaxProcs = 65536;
long g_all_pid[kMaxProcs], g_all_ppid[kMaxProcs];

void scan_all(long root) {
  int n = 0;
  each_process([&](long pid, long ppid) {
    if (n >= kMaxProcs) return;
    g_all_pid[n] = pid;
    g_all_ppid[n] = ppid;
    ++n;
  });
  g_npids = 0;
  long parent = root;
  for (int next = -1; next < g_npids; ++next) {
    if (next >= 0) parent = g_pids[next];
    for (int i = 0; i < n; ++i)
      if (g_all_ppid[i] == parent) add_pid(g_all_pid[i]);
  }
}

void find_descendants(long root) {
  g_npids = 0;
  bool ok = each_child(root, add_pid);
  for (int next = 0; ok && next < g_npids; ++next) ok = each_child(g_pids[next], add_pid);
  if (!ok) scan_all(root);
}

void signal_tree(int sig) {
  // The leader's group first (cheap, catches most of a tree at once) while the leader is
  // unreaped and so pins the group id; then every descendant found in /proc, which
  // catches setsid/setpgid escapees that still descend from us.
  if (!g_leader_reaped && g_leader > 1) {
    sys(SYS_kill, -g_leader, sig);
    if (sig == SIGTERM) sys(SYS_kill, -g_leader, SIGCONT);
  }
  find_descendants(sys(SYS_getpid));
  for (int i = 0; i < g_npids; ++i) {
    long p = g_pids[i];
    sys(SYS_kill, p, sig);
    if (sig == SIGTERM) sys(SYS_kill, p, SIGCONT);  // a stopped process cannot act on TERM
    // A process with SIGKILL pending can only die; where we may, let it do so before the
    // busy processes of a saturated machine (it cannot run its own code again). The same,
    // more gently, for one that SIGTERM will end.
    if (sig == SIGKILL || sig == SIGTERM) hasten_dying(p, sig);
  }
}

void drain(int sigfd) {
  struct signalfd_siginfo si;
  while (sys(SYS_read, sigfd, &si, sizeof si) > 0) {
  }
}

// SIGKILL everything below us until nothing is left. Orphans of killed processes are
// re-parented to us (we are a subreaper), so each round finds what the last one missed.
[[noreturn]] void kill_everything(int sigfd) {
  while (true) {
    signal_tree(SIGKILL);
    bool dummy = false;
    if (!reap_all(&dummy)) finish();
    struct pollfd p{sigfd, POLLIN, 0};
    wait_fds(&p, 1, 10);
    drain(sigfd);
  }
}

// The leader, in the forked child: a session of its own, our stdio, then the program.
// A failure goes back through err_fd as (stage, errno).
[[noreturn]] void leader_main(char** execs, char** args, char** envp, int err_fd) {
  auto fail = [err_fd](int stage, long err) {
    int32_t ce[2] = {stage, static_cast<int32_t>(err)};
    while (sys(SYS_write, err_fd, ce, sizeof ce) == -EINTR) {
    }
    leave(127);
  };
  set_disposition(SIGPIPE, reinterpret_cast<void*>(SIG_DFL));  // we ignore it; programs expect it
  unsigned long none = 0;
  sys(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
  long r = sys(SYS_setsid);
  if (r < 0) fail(STAGE_SESSION, -r);
  sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  // Pass on stdio and whatever else the supervisor placed below our own fds.
  int top = 2;
  for (int fd = 0; fd < g_status_fd; ++fd) {
    if (sys(SYS_fcntl, fd, F_GETFD) < 0) continue;
    r = sys(SYS_fcntl, fd, F_SETFD, 0);
    if (r < 0) fail(STAGE_FDS, -r);
    top = fd > top ? fd : top;
  }
  sys(SYS_close_range, top + 1, ~0U, CLOSE_RANGE_CLOEXEC);
  long err = exec_search(execs, args, envp);
  fail(STAGE_EXEC, err);
  leave(127);
}

// Where permitted, wait and kill ahead of busy tasks, as the supervisor thread does,
// never passed on to children; PARDO_NO_REALTIME=1 in the environment rules out real time.
void raise_own_priority(char** envp) {
  bool realtime = true;
  for (char** e = envp; *e; ++e)
    if (after(*e, "PARDO_NO_REALTIME=")) realtime = false;
  raise_priority(realtime);
}

int task_main(int argc, char** argv, char** envp) {
  int ctl_fd = -1;
  char* execs[1025];  // PATH candidates, in order, NULL-terminated
  int nexecs = 0;
  int i = 2;
  for (; i < argc; ++i) {
    const char* a = argv[i];
    const char* v;
    if (a[0] == '-' && a[1] == '-' && a[2] == '\0') {
      ++i;
      break;
    }
    if ((v = after(a, "--status-fd="))) g_status_fd = static_cast<int>(parse_long(v));
    else if ((v = after(a, "--ctl-fd="))) ctl_fd = static_cast<int>(parse_long(v));
    else if ((v = after(a, "--linger")) && *v == '\0') g_linger = true;
    else if ((v = after(a, "--exec=")) && nexecs < 1024) execs[nexecs++] = const_cast<char*>(v);
  }
  char** args = argv + i;
  if (g_status_fd < 0 || ctl_fd < 0 || i >= argc) {
    say("pardo-shepherd: bad arguments\n");
    return 2;
  }
  if (nexecs == 0) execs[nexecs++] = args[0];
  execs[nexecs] = nullptr;
  sys(SYS_fcntl, g_status_fd, F_SETFD, FD_CLOEXEC);
  sys(SYS_fcntl, ctl_fd, F_SETFD, FD_CLOEXEC);
  set_disposition(SIGPIPE, reinterpret_cast<void*>(SIG_IGN));  // a vanished supervisor must not kill us before we clean up
  sys(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);

  unsigned long mask = 0;
  for (int s : {SIGCHLD, SIGTERM, SIGHUP, SIGINT, SIGQUIT}) mask |= 1UL << (s - 1);
  sys(SYS_rt_sigprocmask, SIG_BLOCK, &mask, nullptr, sizeof mask);
  int sigfd = static_cast<int>(sys(SYS_signalfd4, -1, &mask, sizeof mask, SFD_CLOEXEC | SFD_NONBLOCK));

  // The leader: a plain fork (we are small, so it is cheap) that reports a failed exec
  // through a close-on-exec pipe, which reads EOF once the exec has succeeded.
  int ep[2];
  long r = sys(SYS_pipe2, ep, O_CLOEXEC);
  long pid = r < 0 ? r : sys(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) leader_main(execs, args, envp, ep[1]);
  if (r == 0) sys(SYS_close, ep[1]);
  if (pid < 0) {
    ShepherdMsg m{MSG_EXEC_FAILED, STAGE_CLONE, static_cast<int32_t>(-pid), 0, 0, 0, 0};
    send(m);
    finish();
  }
  int32_t ce[2] = {0, 0};
  long n;
  while ((n = sys(SYS_read, ep[0], ce, sizeof ce)) == -EINTR) {
  }
  sys(SYS_close, ep[0]);
  if (n == static_cast<long>(sizeof ce)) {
    int st;
    while (sys(SYS_wait4, pid, &st, 0, nullptr) == -EINTR) {
    }
    ShepherdMsg m{MSG_EXEC_FAILED, ce[0], ce[1], 0, 0, 0, 0};
    send(m);
    finish();
  }
  g_leader = pid;
  // The task was started first, so it inherits none of this.
  raise_own_priority(envp);
  ShepherdMsg started{MSG_STARTED, static_cast<int32_t>(pid), 0, 0, 0, 0, 0};
  send(started);
  // Our stdio belongs to the task; hold none of it, so the task's pipes reach EOF as soon
  // as the task's own processes are gone.
  long devnull = sys(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR);
  for (int fd = 0; fd < g_status_fd; ++fd)
    if (fd != devnull) sys(SYS_dup3, devnull, fd, 0);
  if (devnull >= g_status_fd) sys(SYS_close, devnull);

  struct pollfd pfd[2] = {{sigfd, POLLIN, 0}, {ctl_fd, POLLIN, 0}};
  while (true) {
    long k = wait_fds(pfd, 2, -1);
    if (k < 0 && k != -EINTR) kill_everything(sigfd);
    if (k <= 0) continue;
    if (pfd[0].revents) {
      struct signalfd_siginfo si;
      bool stop = false;
      while (sys(SYS_read, sigfd, &si, sizeof si) == static_cast<long>(sizeof si)) {
        if (si.ssi_signo != SIGCHLD) stop = true;
      }
      if (stop) kill_everything(sigfd);
      bool leader_exited = false;
      bool any_left = reap_all(&leader_exited);
      if (!any_left && g_leader_reaped) finish();  // the common case: nothing left to kill
      if (leader_exited && !g_linger) kill_everything(sigfd);
    }
    if (pfd[1].revents) {
      char c;
      long got = sys(SYS_read, ctl_fd, &c, 1);
      if (got == 0 || (got < 0 && got != -EINTR && got != -EAGAIN)) kill_everything(sigfd);
      if (got == 1 && c == CTL_KILL) kill_everything(sigfd);
      if (got == 1 && c == CTL_TERM) signal_tree(SIGTERM);
    }
  }
}

// ------------------------------------------------------------------ the guardian

// "populated 0" in DIR/cgroup.events, waiting up to timeout_ms for it.
void wait_empty(const char* dir, int timeout_ms) {
  Text f;
  f.add(dir).add("/cgroup.events");
  long fd = sys(SYS_openat, AT_FDCWD, f.buf, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  int64_t end = now_ms() + timeout_ms;
  while (true) {
    char buf[256];
    long n = sys(SYS_pread64, fd, buf, sizeof buf - 1, 0);
    if (n <= 0) break;
    buf[n] = '\0';
    const char* at = nullptr;
    for (const char* p = buf; *p && !at; ++p) at = after(p, "populated ");
    if (!at || *at != '1') break;
    int64_t left = end - now_ms();
    if (left <= 0) break;
    // kernfs signals a change of cgroup.events with POLLPRI.
    struct pollfd p{static_cast<int>(fd), POLLPRI, 0};
    wait_fds(&p, 1, static_cast<int>(left));
  }
  sys(SYS_close, fd);
}

void remove_tree(const char* dir) {
  each_entry(dir, [dir](const char* name, unsigned char type) {
    if (type != DT_DIR) return;
    Text sub;
    sub.add(dir).add("/").add(name);
    remove_tree(sub.buf);
  });
  sys(SYS_rmdir, dir);
}

int guardian_main(const char* dir) {
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP})
    set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  char buf[256];
  while (true) {
    long n = sys(SYS_read, 0, buf, sizeof buf);
    if (n == 0 || (n < 0 && n != -EINTR)) break;
  }
  if (sys(SYS_faccessat, AT_FDCWD, dir, F_OK) == 0) {
    Text kill_file;
    kill_file.add(dir).add("/cgroup.kill");
    long fd = sys(SYS_openat, AT_FDCWD, kill_file.buf, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      sys(SYS_write, fd, "1", 1);
      sys(SYS_close, fd);
    }
    wait_empty(dir, 10000);
    remove_tree(dir);
  }
  // EBUSY while another supervisor still has a subtree here: then the last one removes it.
  Text parent;
  parent.add(dir);
  for (size_t k = parent.n; k > 0; --k) {
    if (parent.buf[k - 1] != '/') continue;
    parent.buf[k - 1] = '\0';
    if (k > 1) sys(SYS_rmdir, parent.buf);
    break;
  }
  return 0;
}

// The live groups of the pgroup guardian: an open-addressing set of pgids. Static, so that
// the program needs no allocator; its size bounds the groups in flight at once, far above
// what one supervisor runs (a full set stops recording, it never overwrites).
constexpr uint32_t kGroupSlots = 1u << 16;
int32_t g_groups[kGroupSlots];  // 0 = empty, -1 = removed, else a pgid

uint32_t group_slot(int32_t pgid) { return (static_cast<uint32_t>(pgid) * 2654435761u) & (kGroupSlots - 1); }

void group_add(int32_t pgid) {
  uint32_t i = group_slot(pgid);
  for (uint32_t n = 0; n < kGroupSlots; ++n, i = (i + 1) & (kGroupSlots - 1)) {
    if (g_groups[i] <= 0) {
      g_groups[i] = pgid;
      return;
    }
  }
}

void group_remove(int32_t pgid) {
  uint32_t i = group_slot(pgid);
  for (uint32_t n = 0; n < kGroupSlots && g_groups[i] != 0; ++n, i = (i + 1) & (kGroupSlots - 1)) {
    if (g_groups[i] == pgid) {
      g_groups[i] = -1;
      return;
    }
  }
}

int pgroup_guardian_main() {
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP})
    set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  // Records are 4 bytes and written whole (a pipe write under PIPE_BUF is atomic), so a
  // read of a multiple of 4 never splits one; keep a partial tail anyway.
  unsigned char buf[4096];
  size_t have = 0;
  while (true) {
    long n = sys(SYS_read, 0, buf + have, sizeof buf - have);
    if (n == -EINTR) continue;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
    size_t at = 0;
    for (; at + 4 <= have; at += 4) {
      int32_t v;
      __builtin_memcpy(&v, buf + at, 4);
      if (v > 0) group_add(v);
      else if (v < 0) group_remove(-v);
    }
    __builtin_memmove(buf, buf + at, have - at);
    have -= at;
  }
  // The supervisor is gone. A listed group still has members (its id cannot have been
  // reused while the supervisor had not yet said it was done with it).
  for (uint32_t i = 0; i < kGroupSlots; ++i)
    if (g_groups[i] > 0) sys(SYS_kill, -g_groups[i], SIGKILL);
  return 0;
}

}  // namespace

extern "C" int pardo_shepherd_main(int argc, char** argv, char** envp) {
  if (argc >= 2) {
    if (const char* rest = after(argv[1], "--guardian-pgroups"); rest && *rest == '\0')
      return pgroup_guardian_main();
    if (const char* dir = after(argv[1], "--guardian=")) return guardian_main(dir);
    if (after(argv[1], "--task") && argv[1][6] == '\0') return task_main(argc, argv, envp);
  }
  say("pardo-shepherd is started by pardo's engine; it is not meant to be run by hand.\n");
  return 2;
}

#ifdef PARDO_FREESTANDING
// No libc: the entry point, and the few functions the compiler may call on its own.
extern "C" [[noreturn]] void pardo_shepherd_start(long* sp) {
  int argc = static_cast<int>(sp[0]);
  char** argv = reinterpret_cast<char**>(sp + 1);
  leave(pardo_shepherd_main(argc, argv, argv + argc + 1));
}

__asm__(
    ".text\n"
    ".globl _start\n"
    ".type _start, @function\n"
    "_start:\n"
    "  xor %rbp, %rbp\n"
    "  mov %rsp, %rdi\n"     // argc, argv..., NULL, envp..., NULL
    "  and $-16, %rsp\n"
    "  call pardo_shepherd_start\n"
    "  hlt\n");

extern "C" void* memset(void* d, int c, size_t n) {
  auto* p = static_cast<volatile unsigned char*>(d);  // volatile: not turned into memset
  while (n--) *p++ = static_cast<unsigned char>(c);
  return d;
}

extern "C" void* memcpy(void* d, const void* s, size_t n) {
  auto* p = static_cast<volatile unsigned char*>(d);
  auto* q = static_cast<const unsigned char*>(s);
  while (n--) *p++ = *q++;
  return d;
}

extern "C" void* memmove(void* d, const void* s, size_t n) {
  auto* p = static_cast<volatile unsigned char*>(d);
  auto* q = static_cast<const unsigned char*>(s);
  if (p < q) {
    while (n--) *p++ = *q++;
  } else {
    while (n--) p[n] = q[n];
  }
  return d;
}

extern "C" int memcmp(const void* a, const void* b, size_t n) {
  auto* p = static_cast<const unsigned char*>(a);
  auto* q = static_cast<const unsigned char*>(b);
  for (; n; --n, ++p, ++q)
    if (*p != *q) return *p - *q;
  return 0;
}
#else
int main(int argc, char** argv, char** envp) { return pardo_shepherd_main(argc, argv, envp); }
#endif
