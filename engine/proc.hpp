// Small readers of /proc and of cgroup files, shared by the engine and the shepherd.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace pardo {

// Whole contents of a (small) file; false when it cannot be read.
bool read_file(const std::string& path, std::string* out);
// pread from offset 0 of an open file into out; false on error.
bool pread_all(int fd, std::string* out);
// Write a short string to a file; returns 0 or an errno.
int write_file(const std::string& path, const std::string& data);

// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or 0.
unsigned long long process_start_ticks(pid_t pid);
// Parent pid from /proc/PID/stat, or -1.
pid_t process_ppid(pid_t pid);
// Every pid in /proc with its parent pid.
std::vector<std::pair<pid_t, pid_t>> list_processes();
// All descendants of root (not root itself), found by walking parent links in /proc.
std::vector<pid_t> descendants_of(pid_t root);

// Give a thread that has SIGKILL pending the CPU to die on: SCHED_FIFO where permitted,
// else nice -20 where permitted, else nothing.
void hasten_one(pid_t tid);

// The same for a thread just sent `sig` (a deadline's SIGTERM) when its default action
// will end the process: not caught, not ignored, not blocked by the thread (from
// /proc/TID/status). nice -20 only, where permitted: should the thread install a handler
// after all, it competes fairly, not in real time, until the grace period's SIGKILL.
void hasten_fatal(pid_t tid, int sig);

// The calling thread's nice value (0 if it cannot be read).
int own_nice();
// Move the calling thread to SCHED_FIFO priority 1 (on) or back to SCHED_OTHER at
// kRaisedNice (off), never inherited by children (SCHED_RESET_ON_FORK). False when not
// permitted.
constexpr int kRaisedNice = -10;
bool set_realtime(bool on);
// Raise the calling thread as far as permitted: real time unless PARDO_NO_REALTIME is
// set, else kRaisedNice, else nothing. Says which: "SCHED_FIFO 1", "nice -10", "normal".
std::string raise_own_priority();

// Monotonic and wall clocks in nanoseconds.
int64_t mono_ns();
int64_t wall_ns();

}  // namespace pardo
