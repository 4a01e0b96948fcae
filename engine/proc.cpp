#include "proc.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>


namespace pardo {

static bool pread_all(int fd, std::string* out) {
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

bool read_file(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = pread_all(fd, out);
  close(fd);
  return ok;
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

std::vector<std::pair<pid_t, pid_t>> list_processes() {
  std::vector<std::pair<pid_t, pid_t>> out;
  each_process([&](long pid, long ppid) { out.emplace_back(static_cast<pid_t>(pid), static_cast<pid_t>(ppid)); });
  return out;
}

std::vector<pid_t> descendants_of(pid_t root) {
  std::vector<pid_t> out;
  std::vector<PidLink> links;
  find_descendants(root, out, links);
  return out;
}

std::string raise_own_priority() {
  switch (raise_priority(!getenv("PARDO_NO_REALTIME"))) {
    case RAISED_REALTIME: return "SCHED_FIFO 1";
    case RAISED_NICE: return "nice " + std::to_string(kRaisedNice);
    default: return "normal";
  }
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

IgnoredSignals::IgnoredSignals() : fd_(open("/proc/self/status", O_RDONLY | O_CLOEXEC)) {}

IgnoredSignals::~IgnoredSignals() {
  if (fd_ >= 0) close(fd_);
}

uint64_t IgnoredSignals::now() const {
  char buf[4096];
  ssize_t n = fd_ >= 0 ? pread(fd_, buf, sizeof buf - 1, 0) : -1;
  if (n > 0) {
    buf[n] = '\0';
    if (const char* at = strstr(buf, "\nSigIgn:")) {
      char* end = nullptr;
      unsigned long long v = strtoull(at + 8, &end, 16);
      if (end != at + 8) return v;
    }
  }
  uint64_t ignored = 0;
  for (int sig = 1; sig <= 64; ++sig) {
    struct sigaction old;
    if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) ignored |= 1ULL << (sig - 1);
  }
  return ignored;
}

}  // namespace pardo
