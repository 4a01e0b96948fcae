// pardo-shepherd --guardian=CGROUP_DIR: the cgroup rung's guardian. Started once per
// supervisor with the read end of a pipe as its stdin, whose write end only the supervisor
// holds; it waits for EOF there (the supervisor process died, however it died, or shut
// down), then kills every process in CGROUP_DIR and removes it.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>

#include <initializer_list>

#include "shepherd/shepherd.hpp"

namespace pardo {
namespace shepherd {
namespace {

// "populated 0" in DIR/cgroup.events, waiting up to timeout_ms for it. False when the
// cgroup is still populated then.
bool wait_empty(const char* dir, int timeout_ms) {
  Text f;
  f.add(dir).add("/cgroup.events");
  long fd = sys(SYS_openat, AT_FDCWD, f.buf, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;  // gone
  int64_t end = now_ms() + timeout_ms;
  bool empty = false;
  while (true) {
    char buf[256];
    long n = sys(SYS_pread64, fd, buf, sizeof buf - 1, 0);
    if (n <= 0) break;
    buf[n] = '\0';
    const char* at = nullptr;
    for (const char* p = buf; *p && !at; ++p) at = after(p, "populated ");
    if (!at || *at != '1') {
      empty = at != nullptr;
      break;
    }
    int64_t left = end - now_ms();
    if (left <= 0) break;
    // kernfs signals a change of cgroup.events with POLLPRI.
    struct pollfd p{static_cast<int>(fd), POLLPRI, 0};
    wait_fds(&p, 1, static_cast<int>(left));
  }
  sys(SYS_close, fd);
  return empty;
}

// SIGKILL every process of DIR and of the cgroups below it, one by one (what cgroup.kill
// does at once).
void kill_members(const char* dir) {
  Text f;
  f.add(dir).add("/cgroup.procs");
  char buf[4096];  // a longer list is finished by the next round
  if (read_small(f.buf, buf, sizeof buf) > 0) {
    for (const char* p = buf; *p;) {
      const char* end;
      long pid = parse_long(p, 10, &end);
      if (end == p) break;
      if (pid > 1) sys(SYS_kill, pid, SIGKILL);
      p = *end ? end + 1 : end;
    }
  }
  each_entry(dir, [dir](const char* name, unsigned char type) {
    if (type != DT_DIR) return;
    Text sub;
    sub.add(dir).add("/").add(name);
    kill_members(sub.buf);
  });
}

void remove_tree(const char* dir) {
  each_entry(dir, [dir](const char* name, unsigned char type) {
    if (type != DT_DIR) return;
    Text sub;
    sub.add(dir).add("/").add(name);
    remove_tree(sub.buf);
  });
  sys(SYS_rmdir, dir);
}

}  // namespace

int guardian_main(const char* dir) {
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP})
    set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  char buf[256];
  while (true) {
    long n = sys(SYS_read, 0, buf, sizeof buf);
    if (n == 0 || (n < 0 && n != -EINTR)) break;
  }
  if (sys(SYS_faccessat, AT_FDCWD, dir, F_OK) == 0) {
    Text kill_file;
    kill_file.add(dir).add("/cgroup.kill");
    long fd = sys(SYS_openat, AT_FDCWD, kill_file.buf, O_WRONLY | O_CLOEXEC);
    long w = fd < 0 ? fd : sys(SYS_write, fd, "1", 1);
    if (fd >= 0) sys(SYS_close, fd);
    if (w == 1) {
      wait_empty(dir, 10000);
    } else {
      // cgroup.kill refused (it has no reason to be: the subtree is ours). The tasks must
      // not outlive the supervisor all the same: kill them one by one, round after round
      // (a process forked meanwhile is caught by the next), as long as the wait above.
      for (int round = 0; round < 100; ++round) {
        kill_members(dir);
        if (wait_empty(dir, 100)) break;
      }
    }
    remove_tree(dir);
  }
  // EBUSY while another supervisor still has a subtree here: then the last one removes it.
  Text parent;
  parent.add(dir);
  for (size_t k = parent.n; k > 0; --k) {
    if (parent.buf[k - 1] != '/') continue;
    parent.buf[k - 1] = '\0';
    if (k > 1) sys(SYS_rmdir, parent.buf);
    break;
  }
  return 0;
}

}  // namespace shepherd
}  // namespace pardo
