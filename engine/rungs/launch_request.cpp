#include "rungs/launch_request.hpp"

#include <signal.h>
#include <string.h>
#include <unistd.h>

extern char** environ;

namespace pardo {

void encode_launch(const ChildPlan& plan, const IgnoredSignals& ignored, LaunchRequest* hp,
                   std::string* strings) {
  LaunchRequest& h = *hp;
  memset(&h, 0, sizeof h);
  h.magic = kLaunchMagic;
  h.nfds = static_cast<int32_t>(plan.fds.size());
  for (size_t i = 0; i < plan.fds.size(); ++i) h.targets[i] = plan.fds[i].first;
  strings->clear();
  auto add = [strings](const char* v, size_t n) {
    strings->append(v, n);
    strings->push_back('\0');
  };
  for (auto& p : plan.exec_paths) add(p.data(), p.size());
  h.nexec = static_cast<int32_t>(plan.exec_paths.size());
  for (auto& a : plan.argv) add(a.data(), a.size());
  h.nargv = static_cast<int32_t>(plan.argv.size());
  // Without an environment of its own the task gets this process's, as it is now.
  if (plan.has_env) {
    for (auto& e : plan.env) add(e.data(), e.size());
    h.nenv = static_cast<int32_t>(plan.env.size());
  } else {
    for (char** e = environ; e && *e; ++e, ++h.nenv) add(*e, strlen(*e));
  }
  // The working directory: the task's own, else this process's as it is now -- the
  // launcher's is the one this process had when the launcher started, and the caller may
  // have moved since (os.chdir). Without one that can be named (deleted, too long), the
  // launcher's.
  char here[4096];
  if (!plan.cwd.empty()) {
    h.flags |= LAUNCH_CWD;
    add(plan.cwd.data(), plan.cwd.size());
  } else if (getcwd(here, sizeof here) && here[0] == '/') {
    h.flags |= LAUNCH_CWD;
    add(here, strlen(here));
  }
  if (plan.has_cpus) {
    h.flags |= LAUNCH_CPUS;
    static_assert(sizeof(cpu_set_t) == sizeof h.cpus, "cpu_set_t is 1024 bits");
    memcpy(h.cpus, &plan.cpus, sizeof h.cpus);
  }
  if (plan.has_nice) h.flags |= LAUNCH_NICE;
  h.nice = plan.nice;
  h.base_nice = plan.base_nice;
  // The task starts with what this process ignores, as a child of ours would across its
  // exec -- but SIGPIPE and SIGXFSZ, which Python ignores and programs expect at default.
  h.ignored = ignored.now();
  for (int sig : {SIGKILL, SIGSTOP, SIGPIPE, SIGXFSZ}) h.ignored &= ~(1ULL << (sig - 1));
  h.rlimit_as = plan.rlimit_as;
  if (plan.restore_nofile) {
    h.flags |= LAUNCH_RESTORE_NOFILE;
    h.nofile_cur = plan.nofile.rlim_cur;
    h.nofile_max = plan.nofile.rlim_max;
  }
  h.size = static_cast<uint32_t>(strings->size());
}

}  // namespace pardo
