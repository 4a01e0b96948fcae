// pardo-shepherd --guardian=CGROUP_DIR: the cgroup rung's guardian. Started once per
// supervisor with the read end of a pipe as its stdin, whose write end only the supervisor
// holds; it waits for EOF there (the supervisor process died, however it died, or shut
// down), then kills every process in CGROUP_DIR (with cgroup.kill, or by_freeze: by
// freezing it, where the kernel has no cgroup.kill) and removes it, as the supervisor
// itself does at shutdown (the same code: raw/rawcgroup.hpp).
//
// (The pgroup rung needs no guardian: each task's keeper kills its group if the
// supervisor dies.)
#include <signal.h>

#include <initializer_list>

#include "raw/rawcgroup.hpp"
#include "shepherd/shepherd.hpp"

namespace pardo {
namespace shepherd {

int guardian_main(const char* dir, bool by_freeze) {
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP})
    set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  char buf[256];
  while (true) {
    long n = sys(SYS_read, 0, buf, sizeof buf);
    if (n == 0 || (n < 0 && n != -EINTR)) break;
  }
  cgroup_release_subtree(dir, 10000, by_freeze);
  return 0;
}

}  // namespace shepherd
}  // namespace pardo
