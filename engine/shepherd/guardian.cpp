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
#include <fcntl.h>
#include <poll.h>
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

// Read what the pipe holds into the list (all of it, or with a blocking pipe one read):
// the bytes read, or -1 at EOF or on an error (the supervisor is gone either way).
long drain_records(unsigned char* buf, size_t cap, size_t* have, bool once) {
  long total = 0;
  while (true) {
    long n = sys(SYS_read, 0, buf + *have, cap - *have);
    if (n == -EINTR) continue;
    if (n == -EAGAIN) return total;
    if (n <= 0) return -1;
    total += n;
    *have += static_cast<size_t>(n);
    size_t at = 0;
    for (; at + 4 <= *have; at += 4) {
      int32_t v;
      __builtin_memcpy(&v, buf + at, 4);
      if (v > 0) group_add(v);
      else if (v < 0) group_remove(-v);
    }
    __builtin_memmove(buf, buf + at, *have - at);
    *have -= at;
    if (once) return total;
  }
}

int pgroup_guardian_main() {
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP})
    set_disposition(s, reinterpret_cast<void*>(SIG_IGN));
  // Two records a task, and nothing is done with them until the supervisor is gone: so
  // they are read in batches, not as each comes (a wake-up each, on a busy machine a
  // good part of a short task's cost). Once records come, the next are left to gather
  // for kBatchMs, with only the pipe's end (POLLHUP) able to wake us meanwhile; a quiet
  // pipe is waited on as usual. The pipe is made large enough for far more records than
  // one window brings (a writer finding it full would wait for us, not fail).
  constexpr int kBatchMs = 50;
  sys(SYS_fcntl, 0, F_SETPIPE_SZ, 1 << 20);  // best effort: 64 KiB is 16,384 records
  long fl = sys(SYS_fcntl, 0, F_GETFL);
  bool batched = fl >= 0 && sys(SYS_fcntl, 0, F_SETFL, fl | O_NONBLOCK) == 0;
  // Records are 4 bytes and written whole (a pipe write under PIPE_BUF is atomic), so a
  // read of a multiple of 4 never splits one; keep a partial tail anyway.
  unsigned char buf[4096];
  size_t have = 0;
  bool gathering = false;
  while (true) {
    if (batched) {
      struct pollfd p{0, static_cast<short>(gathering ? 0 : POLLIN), 0};
      long k = wait_fds(&p, 1, gathering ? kBatchMs : -1);
      if (k == -EINTR) continue;
      if (k < 0) {
        // Cannot wait: read as each record comes instead.
        batched = sys(SYS_fcntl, 0, F_SETFL, fl) != 0;
        gathering = false;
        continue;
      }
    }
    long got = drain_records(buf, sizeof buf, &have, !batched);
    if (got < 0) break;
    gathering = got > 0;  // more may be on their way: let them gather
  }
  // The supervisor is gone. A listed group still has members (its id cannot have been
  // reused while the supervisor had not yet said it was done with it).
  for (uint32_t i = 0; i < kGroupSlots; ++i)
    if (g_groups[i] > 0) sys(SYS_kill, -g_groups[i], SIGKILL);
  return 0;
}

}  // namespace shepherd
}  // namespace pardo
