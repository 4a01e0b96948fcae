#include "probe.hpp"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "rungs/cgroup_tree.hpp"
#include "proc.hpp"
#include "spawn.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace pardo {

std::vector<std::pair<std::string, std::string>> probe_features() {
  std::vector<std::pair<std::string, std::string>> out;
  struct utsname u;
  if (uname(&u) == 0) out.emplace_back("kernel", std::string(u.sysname) + " " + u.release);
  long fd = syscall(SYS_pidfd_open, getpid(), 0);
  out.emplace_back("pidfd", fd >= 0 ? "yes" : std::string("no (") + strerror(errno) + ")");
  if (fd >= 0) close(static_cast<int>(fd));
  out.emplace_back("clone3 CLONE_INTO_CGROUP", clone3_into_cgroup_supported() ? "yes" : "no");
  std::string why;
  std::string mnt = find_cgroup2_mount(&why);
  out.emplace_back("cgroup2 mount", mnt.empty() ? "none (" + why + ")" : mnt);
  if (!mnt.empty()) {
    std::string home = own_cgroup_path();
    std::string dir = mnt + (home == "/" ? "" : home);
    out.emplace_back("own cgroup", dir);
    out.emplace_back("own cgroup writable", access(dir.c_str(), W_OK) == 0 ? "yes" : "no");
    std::string ctl;
    read_file(dir + "/cgroup.controllers", &ctl);
    while (!ctl.empty() && (ctl.back() == '\n' || ctl.back() == ' ')) ctl.pop_back();
    out.emplace_back("cgroup v2 controllers", ctl.empty() ? "(none)" : ctl);
  }
  int cur = 0;
  out.emplace_back("child subreaper", prctl(PR_GET_CHILD_SUBREAPER, &cur) == 0 ? "yes" : "no");
  std::string userns;
  if (read_file("/proc/sys/user/max_user_namespaces", &userns)) {
    while (!userns.empty() && userns.back() == '\n') userns.pop_back();
    out.emplace_back("max user namespaces", userns);
  }
  // Zombies adopted by PID 1 that it never reaps: a host without a reaping init.
  int orphan_zombies = 0;
  for (auto& pp : list_processes()) {
    if (pp.second != 1) continue;
    std::string st;
    if (read_file("/proc/" + std::to_string(pp.first) + "/stat", &st)) {
      size_t p = st.rfind(')');
      if (p != std::string::npos && p + 2 < st.size() && st[p + 2] == 'Z') ++orphan_zombies;
    }
  }
  out.emplace_back("zombies left unreaped by PID 1", std::to_string(orphan_zombies));
  return out;
}

}  // namespace pardo
