// What a caller hands the supervisor for one task (Request) and what it gets back: a Handle
// to wait on, holding the task's Completion once it is done.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "spawn.hpp"

namespace pardo {

struct StreamSpec {
  enum Mode { CAPTURE, FD, DEVNULL, INHERIT, TO_STDOUT };
  Mode mode = CAPTURE;
  int fd = -1;  // FD mode: owned by the request (a dup made at submit)
};

struct Request {
  std::vector<std::string> argv;
  std::string executable;  // "" : argv[0]
  bool has_env = false;
  std::vector<std::string> env;
  std::string cwd;
  bool has_input = false;
  std::string input;
  StreamSpec out, err;
  size_t max_output = 16u << 20;
  std::vector<std::pair<int, int>> extra_fds;  // (target, source); sources owned by the request
  int64_t timeout_ns = -1;
  int64_t kill_grace_ns = 2000000000;
  std::vector<int> cpus;
  bool has_nice = false;
  int nice = 0;
  long long memory_limit = 0;
  bool linger = false;
  // Nobody will read the task's max_rss (`pardo run` with no --store or --results): the
  // cgroup and pgroup rungs may then clone it from this process, which is faster than
  // through pardo's launcher, at the price of a max_rss that counts this process's peak
  // (rungs/direct.hpp).
  bool rss_unread = false;
};

struct Completion {
  int pid = -1;
  int spawn_stage = 0, spawn_errno = 0;  // != 0: could not start
  bool exited = false;
  int exit_code = 0;
  int term_signal = 0;
  bool timed_out = false, cancelled = false;
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
  int64_t start_wall_ns = 0, duration_ns = 0;
  int64_t cpu_user_us = 0, cpu_sys_us = 0, max_rss_kb = 0;
  uint64_t watch_seq = 0;
  std::string note;  // something the user should know (e.g. a tree that would not die)
};

class CompletionQueue;

// Python's view of one task. pid, done and result are written by the supervisor thread
// under the supervisor's mutex (result before done: once done is seen, result is final);
// `launch` needs no lock (the kernel and the child write it, see LaunchReport).
struct Handle {
  uint64_t id = 0;
  int pid = 0;  // 0: not started yet; -1: could not start
  // A task started without waiting for its exec: pid is known before whether it started
  // (wait_started() waits for `launch` to settle, without the supervisor thread).
  LaunchReport launch;
  bool done = false;
  Completion result;
  // Weak: a queue holds its finished handles, so a strong pointer back would be a cycle
  // that keeps a dropped queue (and its eventfd) alive forever.
  std::weak_ptr<CompletionQueue> queue;
};

}  // namespace pardo
