// What pardo-shepherd's two roles share (keeper.cpp, guardian.cpp; entry point in main.cpp).
// The program is written against the kernel alone (raw/): no libc call anywhere, so these
// few helpers stand in for the libc functions it would otherwise use.
#pragma once

#include <poll.h>
#include <time.h>

#include <cstddef>
#include <cstdint>

#include "raw/rawproc.hpp"

namespace pardo {
namespace shepherd {

inline size_t str_len(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

// A line on stderr.
inline void say(const char* s) { sys(SYS_write, 2, s, str_len(s)); }

inline int64_t now_ms() {
  struct timespec ts;
  sys(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Wait for events on fds, up to timeout_ms (-1: no limit).
inline long wait_fds(struct pollfd* fds, int n, int timeout_ms) {
  struct timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  return sys(SYS_ppoll, fds, n, timeout_ms < 0 ? nullptr : &ts, nullptr, 8);
}

inline void set_disposition(int sig, void* handler) {
  KernelSigaction sa{handler, 0, nullptr, 0};
  sys(SYS_rt_sigaction, sig, &sa, nullptr, sizeof(unsigned long));
}

[[noreturn]] inline void leave(int code) {
  for (;;) sys(SYS_exit_group, code);
}

// pardo-shepherd --task ...: the per-task keeper of the shepherd rung (keeper.cpp).
int keeper_main(int argc, char** argv, char** envp);
// pardo-shepherd --guardian=DIR: the cgroup rung's guardian (guardian.cpp).
int guardian_main(const char* dir);

}  // namespace shepherd
}  // namespace pardo
