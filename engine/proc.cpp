#include "proc.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <sys/resource.h>

#include <unordered_map>

namespace pardo {

bool read_file(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = pread_all(fd, out);
  close(fd);
  return ok;
}

bool pread_all(int fd, std::string* out) {
  out->clear();
  char buf[4096];
  off_t off = 0;
  while (true) {
    ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    out->append(buf, static_cast<size_t>(n));
    off += n;
  }
}

int write_file(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n = write(fd, data.data(), data.size());
  int err = n < 0 ? errno : 0;
  close(fd);
  return err;
}

// Fields of /proc/PID/stat after the command name, which may itself contain spaces and
// parentheses: everything after the last ')'.
static bool stat_fields(pid_t pid, std::vector<std::string>* fields) {
  std::string s;
  if (!read_file("/proc/" + std::to_string(pid) + "/stat", &s)) return false;
  size_t p = s.rfind(')');
  if (p == std::string::npos) return false;
  fields->clear();
  size_t i = p + 2;
  while (i < s.size()) {
    size_t j = s.find(' ', i);
    if (j == std::string::npos) j = s.size();
    fields->push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return true;
}

unsigned long long process_start_ticks(pid_t pid) {
  std::vector<std::string> f;
  // field 22 overall is index 19 after "pid (comm)" (state is field 3 -> index 0)
  if (!stat_fields(pid, &f) || f.size() < 20) return 0;
  return strtoull(f[19].c_str(), nullptr, 10);
}

pid_t process_ppid(pid_t pid) {
  std::vector<std::string> f;
  if (!stat_fields(pid, &f) || f.size() < 2) return -1;
  return static_cast<pid_t>(atoi(f[1].c_str()));
}

std::vector<std::pair<pid_t, pid_t>> list_processes() {
  std::vector<std::pair<pid_t, pid_t>> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (struct dirent* e = readdir(d)) {
    char* end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    pid_t pp = process_ppid(static_cast<pid_t>(pid));
    if (pp >= 0) out.emplace_back(static_cast<pid_t>(pid), pp);
  }
  closedir(d);
  return out;
}

// Children of every thread of pid, from /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN).
// False when the kernel does not offer those files.
static bool children_of(pid_t pid, std::vector<pid_t>* out) {
  std::string base = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = opendir(base.c_str());
  if (!d) return errno == ENOENT;  // the process is gone: no children
  bool ok = true;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string s;
    if (!read_file(base + "/" + e->d_name + "/children", &s)) {
      if (errno == ENOENT && access((base + "/" + e->d_name).c_str(), F_OK) != 0) continue;
      ok = false;
      break;
    }
    const char* p = s.c_str();
    while (*p) {
      char* end;
      long c = strtol(p, &end, 10);
      if (end == p) break;
      out->push_back(static_cast<pid_t>(c));
      p = end;
      while (*p == ' ') ++p;
    }
  }
  closedir(d);
  return ok;
}

std::vector<pid_t> descendants_of(pid_t root) {
  // Walk down from root through the children files: proportional to the tree, not to
  // every process on the machine.
  {
    std::vector<pid_t> out, stack{root};
    bool ok = true;
    while (ok && !stack.empty()) {
      pid_t p = stack.back();
      stack.pop_back();
      size_t before = out.size();
      ok = children_of(p, &out);
      for (size_t i = before; i < out.size(); ++i) stack.push_back(out[i]);
    }
    if (ok) return out;
  }
  std::unordered_multimap<pid_t, pid_t> kids;
  for (auto& pp : list_processes()) kids.emplace(pp.second, pp.first);
  std::vector<pid_t> out, stack{root};
  while (!stack.empty()) {
    pid_t p = stack.back();
    stack.pop_back();
    auto range = kids.equal_range(p);
    for (auto it = range.first; it != range.second; ++it) {
      out.push_back(it->second);
      stack.push_back(it->second);
    }
  }
  return out;
}

void hasten_one(pid_t tid) {
  struct sched_param sp;
  sp.sched_priority = 1;
  if (sched_setscheduler(tid, SCHED_FIFO, &sp) != 0) setpriority(PRIO_PROCESS, static_cast<id_t>(tid), -20);
}

void hasten_fatal(pid_t tid, int sig) {
  std::string s;
  if (!read_file("/proc/" + std::to_string(tid) + "/status", &s)) return;
  const unsigned long long bit = 1ULL << (sig - 1);
  for (const char* field : {"\nSigBlk:", "\nSigIgn:", "\nSigCgt:"}) {
    size_t at = s.find(field);
    if (at == std::string::npos) return;  // cannot tell: leave it be
    if (strtoull(s.c_str() + at + strlen(field), nullptr, 16) & bit) return;
  }
  setpriority(PRIO_PROCESS, static_cast<id_t>(tid), -20);
}

int own_nice() {
  errno = 0;
  int n = getpriority(PRIO_PROCESS, 0);
  return errno != 0 ? 0 : n;
}

bool set_realtime(bool on) {
  struct sched_param sp;
  sp.sched_priority = on ? 1 : 0;
  int policy = (on ? SCHED_FIFO : SCHED_OTHER) | SCHED_RESET_ON_FORK;
  if (sched_setscheduler(0, policy, &sp) != 0) return false;
  if (!on) setpriority(PRIO_PROCESS, 0, kRaisedNice);
  return true;
}

std::string raise_own_priority() {
  if (!getenv("PARDO_NO_REALTIME") && set_realtime(true)) return "SCHED_FIFO 1";
  int before = own_nice();
  if (setpriority(PRIO_PROCESS, 0, kRaisedNice) == 0) {
    // SCHED_RESET_ON_FORK gives children nice 0 instead of ours; without it, stay as we were
    // (the supervisor counts on children starting at nice 0 whenever it raised itself).
    if (set_realtime(false)) return "nice " + std::to_string(kRaisedNice);
    setpriority(PRIO_PROCESS, 0, before);
  }
  return "normal";
}

int64_t mono_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

int64_t wall_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

}  // namespace pardo
