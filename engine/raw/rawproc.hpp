// Process handling against the kernel alone (rawsys.hpp), shared by the engine (the spawn
// child, the rungs' kill paths) and by the freestanding pardo-shepherd: small /proc files
// read into fixed buffers, the walk of a process tree, the exec search, and priorities.
// Nothing here allocates or touches errno.
#pragma once

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "raw/rawsys.hpp"

namespace pardo {

// s without `prefix`, or nullptr when s does not start with it.
inline const char* after(const char* s, const char* prefix) {
  while (*prefix)
    if (*s++ != *prefix++) return nullptr;
  return s;
}

// A number after optional blanks; *end is where it stopped, or s itself if no digit came.
inline long parse_long(const char* s, int base = 10, const char** end = nullptr) {
  unsigned long v = 0;  // unsigned: a 64-bit signal mask wraps instead of overflowing
  const char* start = s;
  while (*s == ' ' || *s == '\t') ++s;
  const char* digits = s;
  while (true) {
    int d = *s >= '0' && *s <= '9' ? *s - '0'
            : base == 16 && *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
            : base == 16 && *s >= 'A' && *s <= 'F' ? *s - 'A' + 10
                                                   : -1;
    if (d < 0) break;
    v = v * static_cast<unsigned>(base) + static_cast<unsigned>(d);
    ++s;
  }
  if (end) *end = s == digits ? start : s;
  return static_cast<long>(v);
}

// A struct timeval (rusage times) in microseconds.
inline int64_t tv_us(const struct timeval& tv) {
  return static_cast<int64_t>(tv.tv_sec) * 1000000 + tv.tv_usec;
}

// The monotonic clock in milliseconds.
inline int64_t mono_ms() {
  struct timespec ts;
  sys(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Wait for events on fds, up to timeout_ms (-1: no limit). The count ready, or -errno.
inline long wait_fds(struct pollfd* fds, int n, int timeout_ms) {
  struct timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  return sys(SYS_ppoll, fds, n, timeout_ms < 0 ? nullptr : &ts, nullptr, 8);
}

// Appends to a fixed buffer, always NUL-terminated, truncating what does not fit.
struct Text {
  char buf[4096];
  size_t n = 0;
  Text() { buf[0] = '\0'; }
  Text& add(const char* s) {
    while (*s && n + 1 < sizeof buf) buf[n++] = *s++;
    buf[n] = '\0';
    return *this;
  }
  Text& add(long v) {
    char tmp[24];
    int i = 0;
    bool neg = v < 0;
    unsigned long u = neg ? 0UL - static_cast<unsigned long>(v) : static_cast<unsigned long>(v);
    do {
      tmp[i++] = static_cast<char>('0' + u % 10);
      u /= 10;
    } while (u);
    if (neg) tmp[i++] = '-';
    while (i) {
      char c[2] = {tmp[--i], '\0'};
      add(c);
    }
    return *this;
  }
};

// The whole of a small file (truncated to the buffer), or -errno.
inline long read_small(const char* path, char* buf, size_t size) {
  long fd = sys(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  size_t n = 0;
  while (n + 1 < size) {
    long r = sys(SYS_read, fd, buf + n, size - 1 - n);
    if (r == -EINTR) continue;
    if (r <= 0) break;
    n += static_cast<size_t>(r);
  }
  buf[n] = '\0';
  sys(SYS_close, fd);
  return static_cast<long>(n);
}

struct KernelSigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  unsigned long mask;
};

struct linux_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// Calls fn(name, d_type) for each entry of the directory at `path` but . and ..; false
// when it cannot be opened or read to its end (*err: the errno).
template <class Fn>
bool each_entry(const char* path, Fn fn, long* err = nullptr) {
  long fd = sys(SYS_openat, AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    if (err) *err = -fd;
    return false;
  }
  alignas(8) char buf[4096];
  while (true) {
    long n = sys(SYS_getdents64, fd, buf, sizeof buf);
    if (n < 0) {  // a listing cut short is no listing: the caller must not take it as whole
      sys(SYS_close, fd);
      if (err) *err = -n;
      return false;
    }
    if (n == 0) break;
    for (long off = 0; off < n;) {
      auto* e = reinterpret_cast<linux_dirent64*>(buf + off);
      off += e->d_reclen;
      const char* name = e->d_name;
      if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
      fn(name, e->d_type);
    }
  }
  sys(SYS_close, fd);
  return true;
}

// Make every fd from `lowest` up close at the next exec, on any kernel. `keep` (-1: none)
// is an fd that must stay open until then (it is close-on-exec already). In order:
// close_range with CLOSE_RANGE_CLOEXEC (Linux 5.11); close_range closing them now (5.9);
// each fd listed in /proc/self/fd. A seccomp filter may answer EPERM for a call it does
// not know, so any failure moves on to the next way. 0, or -errno when none worked.
inline long cloexec_from(int lowest, int keep) {
  if (sys(SYS_close_range, lowest, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return 0;
  long r;
  if (keep >= lowest) {
    r = keep > lowest ? sys(SYS_close_range, lowest, keep - 1, 0) : 0;
    if (r == 0) r = sys(SYS_close_range, keep + 1, ~0U, 0);
  } else {
    r = sys(SYS_close_range, lowest, ~0U, 0);
  }
  if (r == 0) return 0;
  long failed = 0, err = 0;
  bool listed = each_entry(
      "/proc/self/fd",
      [&](const char* name, unsigned char) {
        const char* end;
        long fd = parse_long(name, 10, &end);
        if (end == name || fd < lowest) return;
        long x = sys(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC);  // the walk's own fd included
        if (x < 0) failed = x;
      },
      &err);
  if (!listed) return -err;
  return failed;
}

// Close every fd from `lowest` up, now (for a process that forks rather than execs: the
// launcher's keepers): close_range (Linux 5.9), else each fd listed in /proc/self/fd,
// closed as the listing goes (entries already listed are not listed again). 0, or -errno.
inline long close_from(int lowest) {
  if (sys(SYS_close_range, lowest, ~0U, 0) == 0) return 0;
  long dir = sys(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return dir;
  alignas(8) char buf[2048];
  long r = 0;
  while (true) {
    long n = sys(SYS_getdents64, dir, buf, sizeof buf);
    if (n <= 0) {
      r = n;
      break;
    }
    for (long off = 0; off < n;) {
      auto* e = reinterpret_cast<linux_dirent64*>(buf + off);
      off += e->d_reclen;
      const char* end;
      long fd = parse_long(e->d_name, 10, &end);
      if (end != e->d_name && fd >= lowest && fd != dir) sys(SYS_close, fd);
    }
  }
  sys(SYS_close, dir);
  return r;
}

// Calls fn(child pid) for the children of every thread of pid, from
// /proc/PID/task/TID/children. False when the kernel has no such files (CONFIG_PROC_CHILDREN);
// a process that is gone has no children.
template <class Fn>
bool each_child(long pid, Fn fn) {
  Text dir;
  dir.add("/proc/").add(pid).add("/task");
  bool ok = true;
  long err = 0;
  bool opened = each_entry(dir.buf, [&](const char* tid, unsigned char) {
    if (!ok) return;
    Text f;
    f.add(dir.buf).add("/").add(tid).add("/children");
    char buf[4096];
    long n = read_small(f.buf, buf, sizeof buf);
    if (n < 0) {
      Text t;
      t.add(dir.buf).add("/").add(tid);
      if (n == -ENOENT && sys(SYS_faccessat, AT_FDCWD, t.buf, F_OK) != 0) return;  // thread gone
      ok = false;
      return;
    }
    for (const char* p = buf; *p;) {
      const char* end;
      long c = parse_long(p, 10, &end);
      if (end == p) break;
      fn(c);
      p = end;
    }
  }, &err);
  return opened ? ok : err == ENOENT;
}

// Calls fn(pid, parent pid) for every process in /proc.
template <class Fn>
void each_process(Fn fn) {
  each_entry("/proc", [&](const char* name, unsigned char) {
    const char* end;
    long pid = parse_long(name, 10, &end);
    if (*end || pid <= 0) return;
    Text f;
    f.add("/proc/").add(pid).add("/stat");
    char buf[1024];
    if (read_small(f.buf, buf, sizeof buf) <= 0) return;
    const char* close = nullptr;  // the command may hold spaces and parentheses
    for (const char* p = buf; *p; ++p)
      if (*p == ')') close = p;
    if (!close || !close[1] || !close[2] || !close[3]) return;
    fn(pid, parse_long(close + 4));  // ") S PPID"
  });
}

// A fixed-size list for code that may not allocate; what does not fit is dropped. Every
// member has an initializer, so a global one is initialized at compile time: the
// freestanding shepherd runs no constructors.
template <class T, int N>
struct FixedList {
  T items[N]{};
  int n = 0;
  void push_back(const T& v) {
    if (n < N) items[n++] = v;
  }
  int size() const { return n; }
  void clear() { n = 0; }
  const T& operator[](int i) const { return items[i]; }
};

struct PidLink {
  long pid = 0, ppid = 0;
};

// Every descendant of root (not root itself) into `out`, a list with push_back, size,
// clear and []: found through the parent links of every process in /proc, gathered in
// `links` (scratch). Never 0, -1 (which kill() reads as "our group" or "everyone") or 1.
template <class List, class Links>
void descendants_by_links(long root, List& out, Links& links) {
  links.clear();
  each_process([&links](long pid, long ppid) { links.push_back(PidLink{pid, ppid}); });
  out.clear();
  for (int next = -1; next < static_cast<int>(out.size()); ++next) {
    long parent = next < 0 ? root : out[next];
    for (int i = 0; i < static_cast<int>(links.size()); ++i)
      if (links[i].ppid == parent && links[i].pid > 1) out.push_back(links[i].pid);
  }
}

// The same, by walking down through the children files: proportional to the tree, not to
// every process on the machine. By the parent links where the kernel has no such files.
template <class List, class Links>
void find_descendants(long root, List& out, Links& links) {
  out.clear();
  auto add = [&out](long p) {
    if (p > 1) out.push_back(p);
  };
  bool ok = each_child(root, add);
  for (int i = 0; ok && i < static_cast<int>(out.size()); ++i) ok = each_child(out[i], add);
  if (!ok) descendants_by_links(root, out, links);
}

// Give a thread that has SIGKILL pending the CPU to die on: SCHED_FIFO where permitted,
// else nice -20 where permitted, else nothing.
inline void hasten_one(long tid) {
  struct sched_param sp{};
  sp.sched_priority = 1;
  if (sys(SYS_sched_setscheduler, tid, SCHED_FIFO, &sp) != 0) sys(SYS_setpriority, PRIO_PROCESS, tid, -20);
}

// The same for a thread just sent `sig` (a deadline's SIGTERM) when its default action
// will end the process: not caught, not ignored, not blocked by the thread (from
// /proc/TID/status). nice -20 only, where permitted: should the thread install a handler
// after all, it competes fairly, not in real time, until the grace period's SIGKILL.
inline void hasten_fatal(long tid, int sig) {
  Text f;
  f.add("/proc/").add(tid).add("/status");
  char buf[4096];
  if (read_small(f.buf, buf, sizeof buf) <= 0) return;
  const unsigned long long bit = 1ULL << (sig - 1);
  for (const char* field : {"\nSigBlk:", "\nSigIgn:", "\nSigCgt:"}) {
    const char* at = nullptr;
    for (const char* p = buf; *p && !at; ++p) at = after(p, field);
    if (!at) return;  // cannot tell: leave it be
    if (static_cast<unsigned long long>(parse_long(at, 16)) & bit) return;
  }
  sys(SYS_setpriority, PRIO_PROCESS, tid, -20);
}

// A thread of a tree just sent `sig` to end it: whichever of the two above applies.
inline void hasten_dying(long tid, int sig) {
  if (sig == SIGKILL)
    hasten_one(tid);
  else
    hasten_fatal(tid, sig);
}

// execve each of the NULL-terminated `paths` in turn, as execvp searches PATH. Returns the
// errno to report once none could be run.
inline int exec_search(char* const* paths, char* const* argv, char* const* envp) {
  int err = ENOENT;
  bool saw_eacces = false;
  for (; *paths; ++paths) {
    err = static_cast<int>(-sys(SYS_execve, *paths, argv, envp));
    // Keep searching PATH on the same errors execvp keeps searching on.
    if (err == EACCES) {
      saw_eacces = true;
    } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV && err != ETIMEDOUT) {
      break;
    }
  }
  if (saw_eacces && (err == ENOENT || err == ENOTDIR)) err = EACCES;
  return err;
}

// Move the calling thread to SCHED_FIFO priority 1 (on) or back to SCHED_OTHER at
// kRaisedNice (off), never inherited by children (SCHED_RESET_ON_FORK). False when not
// permitted.
constexpr int kRaisedNice = -10;
inline bool set_realtime(bool on) {
  struct sched_param sp{};
  sp.sched_priority = on ? 1 : 0;
  if (sys(SYS_sched_setscheduler, 0, (on ? SCHED_FIFO : SCHED_OTHER) | SCHED_RESET_ON_FORK, &sp) != 0)
    return false;
  if (!on) sys(SYS_setpriority, PRIO_PROCESS, 0, kRaisedNice);
  return true;
}

// The calling thread's nice value (0 if it cannot be read).
inline int own_nice() {
  long r = sys(SYS_getpriority, PRIO_PROCESS, 0);  // the raw call returns 20 - nice
  return r < 0 ? 0 : static_cast<int>(20 - r);
}

// Raise the calling thread as far as permitted: real time if `realtime` allows it, else
// kRaisedNice, else nothing.
enum RaisedTo { RAISED_NOT, RAISED_NICE, RAISED_REALTIME };
inline RaisedTo raise_priority(bool realtime) {
  if (realtime && set_realtime(true)) return RAISED_REALTIME;
  int before = own_nice();
  if (sys(SYS_setpriority, PRIO_PROCESS, 0, kRaisedNice) == 0) {
    // SCHED_RESET_ON_FORK gives children nice 0 instead of ours; without it, stay as we were
    // (the supervisor counts on children starting at nice 0 whenever it raised itself).
    if (set_realtime(false)) return RAISED_NICE;
    sys(SYS_setpriority, PRIO_PROCESS, 0, before);
  }
  return RAISED_NOT;
}

}  // namespace pardo
