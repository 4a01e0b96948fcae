#include "probe.hpp"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "proc.hpp"
#include "raw/rawsys.hpp"
#include "rungs/cgroup_tree.hpp"
#include "spawn.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

namespace pardo {

std::vector<std::pair<std::string, std::string>> probe_features() {
  std::vector<std::pair<std::string, std::string>> out;
  struct utsname u;
  if (uname(&u) == 0) out.emplace_back("kernel", std::string(u.sysname) + " " + u.release);
  auto answer = [](long r) { return r >= 0 ? std::string("yes") : std::string("no (") + strerror(errno) + ")"; };
  // The same probes the engine makes (spawn.cpp), answered again for the report.
  out.emplace_back("clone3", start_features().clone3 ? "yes" : answer(syscall(SYS_clone3, nullptr, 0)));
  out.emplace_back("clone3 CLONE_INTO_CGROUP", clone3_into_cgroup_supported() ? "yes" : "no");
  long fd = syscall(SYS_pidfd_open, getpid(), 0);
  out.emplace_back("pidfd", answer(fd));
  if (fd >= 0) close(static_cast<int>(fd));
  // An empty range far above any fd of ours: nothing is closed either way.
  out.emplace_back("close_range", answer(syscall(SYS_close_range, ~0U - 1, ~0U - 1, 0)));
  out.emplace_back("close_range CLOSE_RANGE_CLOEXEC",
                   answer(syscall(SYS_close_range, ~0U - 1, ~0U - 1, CLOSE_RANGE_CLOEXEC)));
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
    // The root cgroup has neither file: look in a cgroup below it then, or in one made
    // for the purpose where we may.
    std::string probe_dir = dir, made;
    if (home == "/") {
      probe_dir.clear();
      made = mnt + "/pardo-probe-" + std::to_string(getpid());
      if (mkdir(made.c_str(), 0755) == 0)
        probe_dir = made;
      else
        made.clear();
      DIR* d = probe_dir.empty() ? opendir(mnt.c_str()) : nullptr;
      if (d) {
        while (struct dirent* e = readdir(d)) {
          if (e->d_type == DT_DIR && e->d_name[0] != '.') {
            probe_dir = mnt + "/" + e->d_name;
            break;
          }
        }
        closedir(d);
      }
    }
    for (const char* f : {"cgroup.kill", "cgroup.freeze"})
      out.emplace_back(f, probe_dir.empty() ? "unknown (no cgroup below the root to look in)"
                          : cgroup_has_file(probe_dir, f) ? "yes" : "no");
    if (!made.empty()) rmdir(made.c_str());
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
