// The wire format between the supervisor and pardo-shepherd.
#pragma once

#include <cstdint>

namespace pardo {

enum ShepherdMsgType : int32_t {
  MSG_STARTED = 1,      // a = task pid
  MSG_EXEC_FAILED = 2,  // a = stage, b = errno
  MSG_LEADER_EXIT = 3,  // a = wait status; rusage of the leader
  MSG_TREE_GONE = 4,    // rusage of every process of the tree (RUSAGE_CHILDREN)
};

struct ShepherdMsg {
  int32_t type;
  int32_t a;
  int32_t b;
  int32_t pad;
  int64_t utime_us;
  int64_t stime_us;
  int64_t maxrss_kb;
};

// Supervisor -> shepherd, one byte each on the control pipe. EOF means the supervisor is
// gone: kill the tree and exit.
constexpr char CTL_TERM = 'T';
constexpr char CTL_KILL = 'K';

}  // namespace pardo
