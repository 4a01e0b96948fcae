// cgroup v2 files against the kernel alone (rawsys.hpp), shared by the engine's cgroup rung
// (rungs/cgroup.cpp, rungs/cgroup_tree.cpp) and by the guardian, which runs without libc
// (shepherd/guardian.cpp): whether a cgroup is populated, killing its processes, and
// removing a subtree once it is empty. Paths are NUL-terminated; nothing here allocates.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>

#include "raw/rawproc.hpp"

namespace pardo {

// "populated" from an open cgroup.events: 1, 0, or -1 when it cannot be read. One pread:
// the file is a few short lines ("populated 0\nfrozen 0\n").
inline int cgroup_populated(int events_fd) {
  char buf[256];
  long n = sys(SYS_pread64, events_fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return -1;
  buf[n] = '\0';
  const char* at = nullptr;
  for (const char* p = buf; *p && !at; ++p) at = after(p, "populated ");
  if (!at) return -1;
  return *at == '1' ? 1 : 0;
}

// Wait until DIR is unpopulated, up to timeout_ms. True when it is (or is gone).
inline bool cgroup_wait_empty(const char* dir, int timeout_ms) {
  Text f;
  f.add(dir).add("/cgroup.events");
  long fd = sys(SYS_openat, AT_FDCWD, f.buf, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fd == -ENOENT;
  int64_t end = mono_ms() + timeout_ms;
  bool empty = false;
  while (true) {
    int p = cgroup_populated(static_cast<int>(fd));
    if (p <= 0) {
      empty = p == 0;
      break;
    }
    int64_t left = end - mono_ms();
    if (left <= 0) break;
    // kernfs signals a change of cgroup.events with POLLPRI.
    struct pollfd pfd{static_cast<int>(fd), POLLPRI, 0};
    wait_fds(&pfd, 1, static_cast<int>(left));
  }
  sys(SYS_close, fd);
  return empty;
}

// Kill every process in DIR and below it at once (cgroup.kill, Linux 5.14+). 0 or -errno.
inline long cgroup_kill(const char* dir) {
  Text f;
  f.add(dir).add("/cgroup.kill");
  long fd = sys(SYS_openat, AT_FDCWD, f.buf, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  long w = sys(SYS_write, fd, "1", 1);
  sys(SYS_close, fd);
  return w == 1 ? 0 : w < 0 ? w : -EIO;
}

// Send sig to each process of DIR and of the cgroups below it, one by one: for signals
// cgroup.kill does not know, and in its place should it be refused. A process forked
// meanwhile is missed; callers that must end everything repeat until DIR is empty.
inline void cgroup_signal_members(const char* dir, int sig) {
  Text f;
  f.add(dir).add("/cgroup.procs");
  char buf[4096];  // a longer list is finished by the next round
  if (read_small(f.buf, buf, sizeof buf) > 0) {
    for (const char* p = buf; *p;) {
      const char* end;
      long pid = parse_long(p, 10, &end);
      if (end == p) break;
      if (pid > 1) {
        sys(SYS_kill, pid, sig);
        if (sig == SIGTERM) sys(SYS_kill, pid, SIGCONT);  // a stopped process cannot act on TERM
      }
      p = *end ? end + 1 : end;
    }
  }
  each_entry(dir, [dir, sig](const char* name, unsigned char type) {
    if (type != DT_DIR) return;
    Text sub;
    sub.add(dir).add("/").add(name);
    cgroup_signal_members(sub.buf, sig);
  });
}

// Remove DIR and every cgroup below it (they must be empty of processes). 0 or -errno of
// DIR's own removal; a DIR already gone counts as removed.
inline long cgroup_remove_tree(const char* dir) {
  each_entry(dir, [dir](const char* name, unsigned char type) {
    if (type != DT_DIR) return;
    Text sub;
    sub.add(dir).add("/").add(name);
    cgroup_remove_tree(sub.buf);
  });
  long r = sys(SYS_rmdir, dir);
  return r == -ENOENT ? 0 : r;
}

// Kill everything in a supervisor's subtree, wait (bounded) for it to be gone, remove it,
// and remove the shared parent too when no other supervisor has a subtree there.
inline void cgroup_release_subtree(const char* dir, int timeout_ms) {
  if (sys(SYS_faccessat, AT_FDCWD, dir, F_OK) == 0) {
    if (cgroup_kill(dir) == 0) {
      cgroup_wait_empty(dir, timeout_ms);
    } else {
      // Refused (it has no reason to be: the subtree is ours). Its processes must not
      // outlive it all the same: one by one, round after round, for as long.
      for (int64_t end = mono_ms() + timeout_ms;;) {
        cgroup_signal_members(dir, SIGKILL);
        if (cgroup_wait_empty(dir, 20) || mono_ms() >= end) break;
      }
    }
    cgroup_remove_tree(dir);
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
}

}  // namespace pardo
