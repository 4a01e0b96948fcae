// cgroup v2 files against the kernel alone (rawsys.hpp), shared by the engine's cgroup rung
// (rungs/cgroup.cpp, rungs/cgroup_tree.cpp) and by the guardian, which runs without libc
// (shepherd/guardian.cpp): whether a cgroup is populated, killing its processes (with
// cgroup.kill, or by freezing where the kernel lacks it), and removing a subtree once it is
// empty. Paths are NUL-terminated; nothing here allocates.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>

#include "fault.hpp"
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

// Wait until DIR/cgroup.events has `key` (e.g. "frozen ") followed by `want`, up to
// timeout_ms. 1 when it has; 0 when it has not by then, or the file lacks the key or
// cannot be read; -errno when the file cannot be opened.
inline long cgroup_wait_event(const char* dir, const char* key, char want, int timeout_ms) {
  Text f;
  f.add(dir).add("/cgroup.events");
  long fd = sys(SYS_openat, AT_FDCWD, f.buf, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  int64_t end = mono_ms() + timeout_ms;
  long seen = 0;
  while (true) {
    char buf[256];
    long n = sys(SYS_pread64, fd, buf, sizeof buf - 1, 0);
    if (n <= 0) break;
    buf[n] = '\0';
    const char* at = nullptr;
    for (const char* p = buf; *p && !at; ++p) at = after(p, key);
    if (!at) break;
    if (*at == want) {
      seen = 1;
      break;
    }
    int64_t left = end - mono_ms();
    if (left <= 0) break;
    // kernfs signals a change of cgroup.events with POLLPRI.
    struct pollfd pfd{static_cast<int>(fd), POLLPRI, 0};
    wait_fds(&pfd, 1, static_cast<int>(left));
  }
  sys(SYS_close, fd);
  return seen;
}

// Wait until DIR is unpopulated, up to timeout_ms. True when it is (or is gone).
inline bool cgroup_wait_empty(const char* dir, int timeout_ms) {
  long r = cgroup_wait_event(dir, "populated ", '0', timeout_ms);
  return r == 1 || r == -ENOENT;
}

// Send sig to each process of DIR and of the cgroups below it, one by one: for signals
// cgroup.kill does not know, in its place where the kernel lacks it (frozen first), and
// should it be refused. A process forked meanwhile is missed (unless the cgroup is frozen);
// callers that must end everything repeat until DIR is empty.
inline void cgroup_signal_members(const char* dir, int sig) {
  Text f;
  f.add(dir).add("/cgroup.procs");
  long fd = sys(SYS_openat, AT_FDCWD, f.buf, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    auto send = [sig](long pid) {
      if (pid <= 1) return;
      sys(SYS_kill, pid, sig);
      if (sig == SIGTERM) sys(SYS_kill, pid, SIGCONT);  // a stopped process cannot act on TERM
    };
    char buf[4096];
    long pid = 0;
    bool in_number = false;
    while (true) {  // the whole list, however long: a pid may straddle two reads
      long got = sys(SYS_read, fd, buf, sizeof buf);
      if (got == -EINTR) continue;
      if (got <= 0) break;
      for (long i = 0; i < got; ++i) {
        if (buf[i] >= '0' && buf[i] <= '9') {
          pid = pid * 10 + (buf[i] - '0');
          in_number = true;
        } else if (in_number) {
          send(pid);
          pid = 0;
          in_number = false;
        }
      }
    }
    if (in_number) send(pid);
    sys(SYS_close, fd);
  }
  each_entry(dir, [dir, sig](const char* name, unsigned char type) {
    if (type != DT_DIR) return;
    Text sub;
    sub.add(dir).add("/").add(name);
    cgroup_signal_members(sub.buf, sig);
  });
}

// Write the string s to DIR/NAME. 0 or -errno.
inline long cgroup_write(const char* dir, const char* name, const char* s) {
  Text f;
  f.add(dir).add("/").add(name);
  long fd = sys(SYS_openat, AT_FDCWD, f.buf, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  size_t n = 0;
  while (s[n]) ++n;
  long w = sys(SYS_write, fd, s, n);
  sys(SYS_close, fd);
  return w == static_cast<long>(n) ? 0 : w < 0 ? w : -EIO;
}

// What cgroup.kill (Linux 5.14) does in one step, in three for 5.2-5.13: freeze DIR
// (cgroup.freeze, 5.2: no member runs user code again, so none can fork), SIGKILL every
// member of it and of every cgroup below (a fatal signal ends a frozen process too), thaw.
// 0, or -errno of the freeze (then nothing was done).
inline long cgroup_freeze_kill(const char* dir) {
  long r = fault::hit(fault::CGROUP_FREEZE) ? -fault::err(fault::CGROUP_FREEZE)
                                            : cgroup_write(dir, "cgroup.freeze", "1");
  if (r < 0) return r;
  // Frozen within microseconds, unless a member is stuck in the kernel (where SIGKILL would
  // not reach it either): then kill what is there, and the caller's wait sees the rest.
  cgroup_wait_event(dir, "frozen ", '1', 1000);
  cgroup_signal_members(dir, SIGKILL);
  // Unchecked: the members are dying whether or not the thaw is taken, and a cgroup once
  // killed is removed, never reused (Leaf::killed).
  cgroup_write(dir, "cgroup.freeze", "0");
  return 0;
}

// Kill every process in DIR and below it at once: cgroup.kill (Linux 5.14+), or, with
// `by_freeze` (the kernel has no cgroup.kill), cgroup_freeze_kill. 0 or -errno.
inline long cgroup_kill(const char* dir, bool by_freeze) {
  if (by_freeze) return cgroup_freeze_kill(dir);
  return cgroup_write(dir, "cgroup.kill", "1");
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

// Kill everything in a supervisor's subtree (`by_freeze`: as cgroup_kill), wait (bounded)
// for it to be gone, remove it, and remove the shared parent too when no other supervisor
// has a subtree there.
inline void cgroup_release_subtree(const char* dir, int timeout_ms, bool by_freeze) {
  if (sys(SYS_faccessat, AT_FDCWD, dir, F_OK) == 0) {
    if (cgroup_kill(dir, by_freeze) == 0) {
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
