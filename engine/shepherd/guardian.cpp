// pardo-shepherd --guardian=CGROUP_DIR: the cgroup rung's guardian. Started once per
// supervisor with the read end of a pipe as its stdin, whose write end only the supervisor
// holds; it waits for EOF there (the supervisor process died, however it died, or shut
// down), then kills every process in CGROUP_DIR (with cgroup.kill, or by_freeze: by
// freezing it, where the kernel has no cgroup.kill) and removes it, as the supervisor
// itself does at shutdown (the same code: raw/rawcgroup.hpp).
//
// pardo-shepherd --guardian-pgroups: the pgroup rung's guardian. It reads int32 records on
// stdin, +PGID when a task's group is made and -PGID when the supervisor is done with it;
// at EOF it SIGKILLs every group still on its list (the leaders die of PDEATHSIG, but not
// what they started).
#include <signal.h>

#include <cstdint>
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

namespace {

// The live groups: an open-addressing set of pgids. Static, so that the program needs no
// allocator; its size bounds the groups in flight at once, far above what one supervisor
// runs (a full set stops recording, it never overwrites).
constexpr uint32_t kGroupSlots = 1u << 16;
int32_t g_groups[kGroupSlots];  // 0 = empty, -1 = removed, else a pgid

uint32_t group_slot(int32_t pgid) {
  return (static_cast<uint32_t>(pgid) * 2654435761u) & (kGroupSlots - 1);
}

void group_add(int32_t pgid) {
  uint32_t i = group_slot(pgid);
  for (uint32_t n = 0; n < kGroupSlots; ++n, i = (i + 1) & (kGroupSlots - 1)) {
    if (g_groups[i] <= 0) {
      g_groups[i] = pgid;
      return;
    }
  }
}

void group_remove(int32_t pgid) {
  uint32_t i = group_slot(pgid);
  for (uint32_t n = 0; n < kGroupSlots && g_groups[i] != 0; ++n, i = (i + 1) & (kGroupSlots - 1)) {
    if (g_groups[i] == pgid) {
      g_groups[i] = -1;
      return;
    }
  }
}

}  // namespace

int pgroup_guardian_main() {
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP})
    set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  // Records are 4 bytes and written whole (a pipe write under PIPE_BUF is atomic), so a
  // read of a multiple of 4 never splits one; keep a partial tail anyway.
  unsigned char buf[4096];
  size_t have = 0;
  while (true) {
    long n = sys(SYS_read, 0, buf + have, sizeof buf - have);
    if (n == -EINTR) continue;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
    size_t at = 0;
    for (; at + 4 <= have; at += 4) {
      int32_t v;
      __builtin_memcpy(&v, buf + at, 4);
      if (v > 0) group_add(v);
      else if (v < 0) group_remove(-v);
    }
    __builtin_memmove(buf, buf + at, have - at);
    have -= at;
  }
  // The supervisor is gone. A listed group still has members (its id cannot have been
  // reused while the supervisor had not yet said it was done with it).
  for (uint32_t i = 0; i < kGroupSlots; ++i)
    if (g_groups[i] > 0) sys(SYS_kill, -g_groups[i], SIGKILL);
  return 0;
}

}  // namespace shepherd
}  // namespace pardo
