// cgroup v2: finding the mount, owning a subtree, per-task leaves, killing and removing.
//
// Layout, under the cgroup this process was started in (its "home"):
//
//   <home>/pardo/                    shared by every supervisor started in <home>
//   <home>/pardo/s<PID>-<TICKS>/     one supervisor's subtree (PID and start time name it,
//                                    so a later supervisor can tell whether it is stale)
//   <home>/pardo/s<PID>-<TICKS>/t<N> one leaf per task in flight, reused once empty
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "raw/rawcgroup.hpp"  // populated, kill, remove: shared with the guardian

namespace pardo {

// The cgroup2 mount point from /proc/self/mountinfo, or "" (why says what was found).
std::string find_cgroup2_mount(std::string* why);
// This process's cgroup path relative to the cgroup2 mount ("0::" line), or "".
std::string own_cgroup_path();

// True when the tests' kernel emulation hides `what` (a cgroupfs file, or "cgroup2").
bool cgroup_test_hidden(const char* what);
// True when dir/name exists and is not hidden.
bool cgroup_has_file(const std::string& dir, const char* name);
// True when trees are killed by freezing (no cgroup.kill: Linux 5.2-5.13), as decided by
// the first CgroupTree::create; what cgroup_kill and cgroup_release_subtree are given.
bool cgroup_kills_by_freeze();

struct Leaf {
  std::string path;
  int dir_fd = -1;     // for CLONE_INTO_CGROUP
  int events_fd = -1;  // cgroup.events: EPOLLPRI when "populated" changes
  int cpu_fd = -1;     // cpu.stat
  uint64_t cpu_user_us = 0, cpu_sys_us = 0;  // baseline at the start of the current task
  bool baseline_fresh = false;  // cpu_* were read when the leaf last became empty
  bool has_memory_max = false;
  bool quarantined = false;  // could not be emptied: never reused
  // cgroup.kill was written. Such a leaf is removed, not reused: on some kernels a child
  // placed with CLONE_INTO_CGROUP into a cgroup that was ever killed gets SIGKILL at birth
  // (its kill sequence number is compared with the parent cgroup's).
  bool killed = false;
};

// One supervisor's subtree.
class CgroupTree {
 public:
  // Create the subtree. nullptr and *why on failure.
  static std::unique_ptr<CgroupTree> create(std::string* why);
  ~CgroupTree();

  const std::string& path() const { return path_; }
  // A free leaf, or a new one; nullptr and *err (an errno) when none can be made.
  Leaf* acquire(int* err);
  void release(Leaf* leaf);
  // Kill everything, wait for it to be gone (bounded) and remove the subtree.
  void destroy();

  // CPU time used in the leaf since the task started, in microseconds.
  static void cpu_delta(Leaf* leaf, uint64_t* user_us, uint64_t* sys_us);
  static void cpu_baseline(Leaf* leaf);
  int set_memory_max(Leaf* leaf, long long bytes);  // 0 or errno

 private:
  void remove(Leaf* leaf);  // close its fds and remove it (quarantined if it will not go)
  std::string path_;
  bool memory_ = false;  // memory controller enabled for the leaves
  unsigned next_ = 0;
  std::vector<std::unique_ptr<Leaf>> leaves_;
  std::vector<Leaf*> free_;
};

}  // namespace pardo
