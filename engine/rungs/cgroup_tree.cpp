#include "rungs/cgroup_tree.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <sstream>

#include "proc.hpp"

namespace pardo {

namespace {
const char* const kNoCgroup2 =
    "no cgroup2 filesystem is mounted (a cgroup v1 host, as RHEL 8 is by default, or none)";
// How a cgroup's tree is killed here: cgroup.kill, or (5.2-5.13) freeze-kill-thaw.
// Decided once, in CgroupTree::create, from what the kernel offers in a cgroup of ours.
std::atomic<bool> g_kill_by_freeze{false};
}  // namespace

bool cgroup_test_hidden(const char* what) {
  // PARDO_TEST_HIDE: cgroupfs files (or "cgroup2", the whole v2 mount) that the tests'
  // kernel emulation (tests/engine/kernel_profile.c) makes us treat as absent, since a
  // seccomp filter cannot hide a file. Read once.
  static const std::string hidden = [] {
    const char* h = getenv("PARDO_TEST_HIDE");
    return "," + std::string(h ? h : "") + ",";
  }();
  return hidden.find("," + std::string(what) + ",") != std::string::npos;
}

bool cgroup_has_file(const std::string& dir, const char* name) {
  return !cgroup_test_hidden(name) && access((dir + "/" + name).c_str(), F_OK) == 0;
}

bool cgroup_kills_by_freeze() { return g_kill_by_freeze.load(); }

std::string find_cgroup2_mount(std::string* why) {
  if (cgroup_test_hidden("cgroup2")) {
    if (why) *why = kNoCgroup2;
    return "";
  }
  std::string info;
  if (!read_file("/proc/self/mountinfo", &info)) {
    if (why) *why = "cannot read /proc/self/mountinfo";
    return "";
  }
  std::istringstream in(info);
  std::string line;
  while (std::getline(in, line)) {
    // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream tail(line.substr(dash + 3));
    std::string fstype;
    tail >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream head(line.substr(0, dash));
    std::string id, parent, dev, root, mnt;
    head >> id >> parent >> dev >> root >> mnt;
    // Mount points escape spaces as \040.
    std::string decoded;
    for (size_t i = 0; i < mnt.size(); ++i) {
      if (mnt[i] == '\\' && i + 3 < mnt.size()) {
        decoded.push_back(static_cast<char>(strtol(mnt.substr(i + 1, 3).c_str(), nullptr, 8)));
        i += 3;
      } else {
        decoded.push_back(mnt[i]);
      }
    }
    return decoded;
  }
  if (why) *why = kNoCgroup2;
  return "";
}

std::string own_cgroup_path() {
  std::string s;
  if (!read_file("/proc/self/cgroup", &s)) return "";
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  }
  return "";
}

namespace {

// Kill and remove the subtrees of supervisors that are gone. Returns how many.
int cgroup_sweep_stale(const std::string& pardo_dir) {
  DIR* d = opendir(pardo_dir.c_str());
  if (!d) return 0;
  std::vector<std::string> stale;
  while (struct dirent* e = readdir(d)) {
    unsigned pid = 0;
    unsigned long long ticks = 0;
    if (sscanf(e->d_name, "s%u-%llu", &pid, &ticks) != 2) continue;
    if (process_start_ticks(static_cast<pid_t>(pid)) == ticks) continue;  // still alive
    stale.push_back(pardo_dir + "/" + e->d_name);
  }
  closedir(d);
  for (auto& s : stale) cgroup_release_subtree(s.c_str(), 2000, cgroup_kills_by_freeze());
  return static_cast<int>(stale.size());
}

}  // namespace

std::unique_ptr<CgroupTree> CgroupTree::create(std::string* why) {
  std::string mnt = find_cgroup2_mount(why);
  if (mnt.empty()) return nullptr;
  std::string home = own_cgroup_path();
  if (home.empty()) {
    *why = "this process has no cgroup v2 path in /proc/self/cgroup";
    return nullptr;
  }
  std::string home_dir = mnt + (home == "/" ? "" : home);
  std::string pardo_dir = home_dir + "/pardo";
  auto t = std::unique_ptr<CgroupTree>(new CgroupTree());
  t->path_ = pardo_dir + "/s" + std::to_string(getpid()) + "-" +
             std::to_string(process_start_ticks(getpid()));
  // The shared parent is removed by the last supervisor that leaves it; if that happens
  // between our two mkdirs, the second fails with ENOENT and we make the parent again.
  for (int attempt = 0;; ++attempt) {
    if (mkdir(pardo_dir.c_str(), 0755) < 0 && errno != EEXIST) {
      int e = errno;
      *why = "no write access to " + home_dir + " (" + strerror(e) +
             "): run under `systemd-run --user --scope -p Delegate=yes ...` or as root";
      return nullptr;
    }
    if (attempt == 0) {
      // cgroup.kill (5.14) kills a tree in one step; cgroup.freeze (5.2) in three.
      if (!cgroup_has_file(pardo_dir, "cgroup.kill")) {
        if (!cgroup_has_file(pardo_dir, "cgroup.freeze")) {
          *why = "the kernel has neither cgroup.kill (Linux 5.14) nor cgroup.freeze (5.2) to kill a "
                 "task's cgroup with";
          rmdir(pardo_dir.c_str());  // EBUSY when others use it: theirs to remove
          return nullptr;
        }
        g_kill_by_freeze.store(true);
      }
      cgroup_sweep_stale(pardo_dir);
    }
    if (mkdir(t->path_.c_str(), 0755) == 0 || errno == EEXIST) break;
    if (errno == ENOENT && attempt < 5) continue;
    int e = errno;
    *why = "cannot create " + t->path_ + ": " + strerror(e);
    return nullptr;
  }
  // memory.max for memory_limit= where the memory controller is available in v2. Enabling
  // it can fail (controller bound to v1, or the no-internal-process rule): then tasks fall
  // back to RLIMIT_AS.
  std::string ctl;
  if (read_file(pardo_dir + "/cgroup.controllers", &ctl) && ctl.find("memory") != std::string::npos) {
    write_file(pardo_dir + "/cgroup.subtree_control", "+memory");
    t->memory_ = write_file(t->path_ + "/cgroup.subtree_control", "+memory") == 0;
  }
  return t;
}

CgroupTree::~CgroupTree() {
  for (auto& l : leaves_) {
    if (l->dir_fd >= 0) close(l->dir_fd);
    if (l->events_fd >= 0) close(l->events_fd);
    if (l->cpu_fd >= 0) close(l->cpu_fd);
  }
}

Leaf* CgroupTree::acquire(int* err) {
  if (!free_.empty()) {
    Leaf* l = free_.back();
    free_.pop_back();
    if (!l->baseline_fresh) cpu_baseline(l);
    l->baseline_fresh = false;
    return l;
  }
  auto l = std::make_unique<Leaf>();
  l->path = path_ + "/t" + std::to_string(next_++);
  if (mkdir(l->path.c_str(), 0755) < 0 && errno != EEXIST) {
    *err = errno;
    return nullptr;
  }
  // cpu.stat is optional (CPU figures only); the other two are not.
  l->dir_fd = open(l->path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (l->dir_fd >= 0) l->events_fd = open((l->path + "/cgroup.events").c_str(), O_RDONLY | O_CLOEXEC);
  if (l->dir_fd < 0 || l->events_fd < 0) {
    *err = errno;
    if (l->dir_fd >= 0) close(l->dir_fd);
    rmdir(l->path.c_str());  // empty: nothing ever ran in it
    return nullptr;
  }
  l->cpu_fd = open((l->path + "/cpu.stat").c_str(), O_RDONLY | O_CLOEXEC);
  l->has_memory_max = memory_;
  cpu_baseline(l.get());
  leaves_.push_back(std::move(l));
  return leaves_.back().get();
}

void CgroupTree::release(Leaf* leaf) {
  if (leaf->quarantined) return;
  // A leaf whose memory cap cannot be lifted would pass it on to the next task: it is
  // removed instead, as a killed one is.
  if (leaf->killed || (leaf->has_memory_max && write_file(leaf->path + "/memory.max", "max") != 0)) {
    remove(leaf);
    return;
  }
  free_.push_back(leaf);
}

void CgroupTree::remove(Leaf* leaf) {
  for (auto it = leaves_.begin(); it != leaves_.end(); ++it) {
    if (it->get() != leaf) continue;
    if (leaf->dir_fd >= 0) close(leaf->dir_fd);
    if (leaf->events_fd >= 0) close(leaf->events_fd);
    if (leaf->cpu_fd >= 0) close(leaf->cpu_fd);
    if (cgroup_remove_tree(leaf->path.c_str()) != 0) leaf->quarantined = true;  // removed at destroy
    if (!leaf->quarantined) leaves_.erase(it);
    else leaf->dir_fd = leaf->events_fd = leaf->cpu_fd = -1;
    return;
  }
}

static void read_cpu(int fd, uint64_t* user, uint64_t* sys) {
  *user = *sys = 0;
  char buf[1024];
  ssize_t n = fd < 0 ? -1 : pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return;
  buf[n] = '\0';
  // "usage_usec N\nuser_usec N\nsystem_usec N\n..."
  if (const char* p = strstr(buf, "user_usec ")) *user = strtoull(p + 10, nullptr, 10);
  if (const char* p = strstr(buf, "system_usec ")) *sys = strtoull(p + 12, nullptr, 10);
}

void CgroupTree::cpu_baseline(Leaf* leaf) { read_cpu(leaf->cpu_fd, &leaf->cpu_user_us, &leaf->cpu_sys_us); }

void CgroupTree::cpu_delta(Leaf* leaf, uint64_t* user_us, uint64_t* sys_us) {
  uint64_t u, s;
  read_cpu(leaf->cpu_fd, &u, &s);
  *user_us = u >= leaf->cpu_user_us ? u - leaf->cpu_user_us : 0;
  *sys_us = s >= leaf->cpu_sys_us ? s - leaf->cpu_sys_us : 0;
  // The leaf is empty now, so this reading is the next task's baseline.
  leaf->cpu_user_us = u;
  leaf->cpu_sys_us = s;
  leaf->baseline_fresh = true;
}

int CgroupTree::set_memory_max(Leaf* leaf, long long bytes) {
  if (!leaf->has_memory_max) return ENOTSUP;
  return write_file(leaf->path + "/memory.max", std::to_string(bytes));
}

void CgroupTree::destroy() {
  if (path_.empty()) return;
  for (auto& l : leaves_) {
    if (l->dir_fd >= 0) close(l->dir_fd);
    if (l->events_fd >= 0) close(l->events_fd);
    if (l->cpu_fd >= 0) close(l->cpu_fd);
    l->dir_fd = l->events_fd = l->cpu_fd = -1;
  }
  leaves_.clear();
  free_.clear();
  cgroup_release_subtree(path_.c_str(), 5000, cgroup_kills_by_freeze());
  path_.clear();
}

}  // namespace pardo
