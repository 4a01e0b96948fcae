// What pardo-shepherd's roles share (launcher.cpp, keeper.cpp, guardian.cpp; entry point in
// main.cpp).
// The program is written against the kernel alone (raw/): no libc call anywhere, so these
// few helpers stand in for the libc functions it would otherwise use.
#pragma once

#include <cstddef>
#include <cstdint>

#include "raw/rawproc.hpp"
#include "shepherd/protocol.hpp"

namespace pardo {
namespace shepherd {

inline size_t str_len(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

// A line on stderr.
inline void say(const char* s) { sys(SYS_write, 2, s, str_len(s)); }

inline void set_disposition(int sig, void* handler) {
  KernelSigaction sa{handler, 0, nullptr, 0};
  sys(SYS_rt_sigaction, sig, &sa, nullptr, sizeof(unsigned long));
}

[[noreturn]] inline void leave(int code) {
  for (;;) sys(SYS_exit_group, code);
}

// pardo-shepherd --launcher: the long-lived launcher that forks the keepers
// (launcher.cpp).
int launcher_main(char** envp);

// What a keeper is given by the launcher that forked it: its fds already in place (the
// task's below status_fd), and the task to start.
struct KeeperArgs {
  int status_fd, ctl_fd;
  bool linger;
  unsigned long long ignored;  // signals the task starts with ignored (bit s-1: signal s)
  long parent;  // the launcher's pid: a keeper whose parent changed was orphaned
  char** execs;  // exec candidates, NULL-terminated
  char** args;
  char** envp;
};
// The per-task keeper of the shepherd rung (keeper.cpp). Never returns.
[[noreturn]] void run_keeper(const KeeperArgs& k);
// A kept keeper (keeper_pool.cpp), forked by the launcher (pid `launcher`) for the
// supervisor holding the other end of `sock`, a SOCK_SEQPACKET socket: serves task after
// task on it. Never returns.
[[noreturn]] void run_kept_keeper(int sock, long launcher);
// The launcher's side of a request for a kept keeper (kKeeperMagic): fork one for the
// socket it brought (fds, n of them), and close them. False when the stream cannot be
// read on.
bool serve_keeper_request(const int* fds, int n, long launcher);

// What the keepers share (keeper.cpp):
// Start fn(arg) in a child vfork-style: CLONE_VM | CLONE_VFORK on a stack of its own, so
// nothing is copied for it; a plain fork where clone3 is refused. Its pid, or -errno.
long start_vfork(int (*fn)(void*), void* arg);
// Only the vfork-style start: -ENOSYS where clone3 is refused (asked once a process).
long clone_vfork(int (*fn)(void*), void* arg);
// Send sig to every process of the tree below us: the leader's group while the leader is
// unreaped (it pins the group id), then every descendant found in /proc.
void signal_descendants(long leader, bool leader_reaped, int sig);
// The launcher's reading of a request's strings (launcher.cpp): pointers into `s` laid out
// in `ptrs` (nexec + nargv + nenv + 3 of them). False when they do not match the counts.
bool split_request(const LaunchRequest& h, char* s, char** ptrs, char*** execs, char*** args,
                   char*** envp, char** cwd);

// A task's settings from its request, applied to this process before the task's exec:
// working directory, CPUs, niceness (`nice` when asked for, checked; else `base_nice`
// unless it is `current_nice` already, unchecked: lowering is always allowed; any
// current_nice outside -20..19 means unknown), the open files limit put back (unchecked:
// only its soft limit was ever raised) and the address space limit. 0, or the stage that
// failed with its errno in *err.
constexpr int kNiceUnknown = 100;
int apply_task_settings(const LaunchRequest& h, const char* cwd, int current_nice, long* err);

// pardo-shepherd --guardian=DIR [--freeze]: the cgroup rung's guardian (guardian.cpp);
// by_freeze: the kernel has no cgroup.kill, so the subtree is killed by freezing it.
int guardian_main(const char* dir, bool by_freeze);
// pardo-shepherd --guardian-pgroups: the pgroup rung's guardian (guardian.cpp).
int pgroup_guardian_main();

}  // namespace shepherd
}  // namespace pardo
