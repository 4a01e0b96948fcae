// Small readers of /proc and of cgroup files, shared by the engine and the shepherd.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "raw/rawproc.hpp"  // hasten_*, priorities, own_nice

namespace pardo {

// Whole contents of a (small) file; false when it cannot be read.
bool read_file(const std::string& path, std::string* out);
// Write a short string to a file; returns 0 or an errno.
int write_file(const std::string& path, const std::string& data);

// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or 0.
unsigned long long process_start_ticks(pid_t pid);
// Every pid in /proc with its parent pid.
std::vector<std::pair<pid_t, pid_t>> list_processes();
// All descendants of root (not root itself), found by walking parent links in /proc.
std::vector<pid_t> descendants_of(pid_t root);

// Raise the calling thread as far as permitted (raise_priority in raw/rawproc.hpp): real time
// unless PARDO_NO_REALTIME is set. Says which: "SCHED_FIFO 1", "nice -10", "normal".
std::string raise_own_priority();

// The signals this process ignores at the moment (bit s-1: signal s), asked at each
// task: one pread of SigIgn in /proc/self/status on an fd kept open (a few us), else a
// sigaction call per signal (about 60 system calls, 12-17 us).
class IgnoredSignals {
 public:
  IgnoredSignals();
  ~IgnoredSignals();
  IgnoredSignals(const IgnoredSignals&) = delete;
  IgnoredSignals& operator=(const IgnoredSignals&) = delete;
  uint64_t now() const;

 private:
  int fd_;
};

// Monotonic and wall clocks in nanoseconds.
int64_t mono_ns();
int64_t wall_ns();

}  // namespace pardo
