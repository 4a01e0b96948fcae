// The wire formats between the supervisor and pardo-shepherd: the launcher's requests
// (supervisor -> launcher, on its socket) and the keeper's status messages (keeper or
// launcher -> supervisor, on each task's status pipe).
#pragma once

#include <cstdint>

namespace pardo {

enum ShepherdMsgType : int32_t {
  MSG_STARTED = 1,      // a = task pid, b = the keeper's own pid
  MSG_EXEC_FAILED = 2,  // a = stage, b = errno
  MSG_LEADER_EXIT = 3,  // a = wait status, b = the task's pid; rusage of the leader
  MSG_TREE_GONE = 4,    // rusage of every process of the tree (RUSAGE_CHILDREN)
  // From the launcher, once it has reaped the keeper: a = the keeper's wait status. The
  // last message on the pipe; the launcher closes its end after it.
  MSG_KEEPER_EXIT = 5,
  // From a keeper whose parent (the launcher) died: it is killing its tree. Sent before
  // the LEADER_EXIT and TREE_GONE that follow.
  MSG_ORPHANED = 6,
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

// One request to the launcher (pardo-shepherd --launcher): this header, then `size` bytes
// of NUL-terminated strings (the exec candidates, argv, the environment, the working
// directory when LAUNCH_CWD), in one write; the fds travel with its first byte
// (SCM_RIGHTS): the task's `nfds` fds, whose places in the task are `targets`, then the
// status pipe's write end and the control pipe's read end.
constexpr uint32_t kLaunchMagic = 0x70617264;  // "pard"
constexpr int kLaunchMaxFds = 48;
constexpr uint32_t kLaunchMaxSize = 64u << 20;  // far above ARG_MAX (execve refuses more)

enum LaunchFlags : uint32_t {
  LAUNCH_LINGER = 1,
  LAUNCH_CWD = 2,
  LAUNCH_CPUS = 4,
  LAUNCH_NICE = 8,          // set `nice` (checked); else `base_nice` (unchecked)
  LAUNCH_RESTORE_NOFILE = 16,
  // LaunchRequest::task is started as the supervisor's own child, with no keeper
  // (launcher.cpp, start_direct; rungs/direct.hpp). Its fds are the task's `nfds`, then,
  // with LAUNCH_CGROUP, the cgroup directory it is cloned into; no status or control pipe.
  // The launcher answers each with a LaunchReply on its socket.
  LAUNCH_DIRECT = 32,
  LAUNCH_CGROUP = 64,
  // The task writes its pid (an int32) into the launcher's guardian pipe (fd kLaunchGuardianFd
  // of the launcher) before its exec: the pgroup guardian knows its group before the
  // program can fork.
  LAUNCH_TELL_GUARDIAN = 128,
  // The launcher adds the task's pidfd to the supervisor's epoll set (its fd
  // kLaunchEpollFd) with watch_key as its data (EPOLLIN | EPOLLONESHOT), before it answers:
  // the task's exit wakes the supervisor whether or not it has read the answer yet.
  LAUNCH_WATCH = 256,
};

struct LaunchRequest {
  uint32_t magic;
  uint32_t size;  // bytes of strings after the header
  uint32_t flags;
  int32_t nfds;
  int32_t targets[kLaunchMaxFds];
  int32_t nexec, nargv, nenv;
  int32_t nice, base_nice;
  int32_t pad;
  int64_t rlimit_as;  // bytes; 0: none
  uint64_t nofile_cur, nofile_max;
  uint64_t cpus[16];  // a cpu_set_t (1024 CPUs)
  uint64_t ignored;   // signals the task starts with ignored (bit s-1: signal s)
  uint64_t task;      // LAUNCH_DIRECT: the supervisor's task id, echoed in the reply
  uint64_t watch_key;  // LAUNCH_WATCH: the epoll data of the task's pidfd
};

// Kept keepers (shepherd/keeper_pool.cpp): long-lived keepers that serve task after task.
// A LaunchRequest with magic kKeeperMagic, no strings and one fd -- one end of a
// SOCK_SEQPACKET socket pair -- asks the launcher to fork one for that socket. On it,
// each message is one thing:
//   supervisor -> keeper: a task, as a LaunchRequest and its strings in one message, the
//     task's fds with it (no status or control pipe: this socket is both); or one
//     control byte (CTL_TERM, CTL_KILL), which an idle keeper ignores (it was meant for
//     a task that ended meanwhile);
//   keeper -> supervisor: ShepherdMsg, one a message: MSG_STARTED (only for a task that
//     runs longer than a moment), MSG_EXEC_FAILED, MSG_LEADER_EXIT, MSG_ORPHANED, and
//     last for each task MSG_DONE or MSG_TREE_GONE, whose `pad` is kKeptRetiring when
//     the keeper exits after it instead of waiting for the next task.
// End of file on it: the keeper is gone (to the supervisor), the supervisor is (to the
// keeper, which then kills its task's tree and exits).
constexpr uint32_t kKeeperMagic = 0x6b656570;  // "keep"
// The largest task message a kept keeper takes; a bigger task goes through the launcher's
// per-task keeper (its strings would grow the kept keeper's memory, and so the max_rss
// of every task it starts after).
constexpr uint32_t kKeptMaxMessage = 60 * 1024;
// The leader exited and its tree is gone with it: a = wait status, b = the task's pid;
// the rusage of the whole tree (this task's processes only).
constexpr int32_t MSG_DONE = 16;
constexpr int32_t kKeptRetiring = 1;

// The answers to a LAUNCH_DIRECT request, on the launcher's socket, each one write (so
// they never interleave, and a read of whole replies ends on a boundary).
//   STARTED, from the launcher, at once: pid > 0, the task exists and is the supervisor's
//     child (CLONE_PARENT), maybe not past its exec yet, and its pidfd comes with this
//     reply (SCM_RIGHTS; flags REPLY_PIDFD), added to the supervisor's epoll set already
//     when REPLY_WATCHED; pid 0, no process was made (stage, err say why).
//   FAILED, from the task itself before it exits 127: it could not get to its exec
//     (stage, err). Written before its exit, so it is readable once its pidfd says it
//     exited; it may come before the STARTED of the same task.
enum LaunchReplyKind : int32_t {
  LAUNCH_REPLY_STARTED = 1,
  LAUNCH_REPLY_FAILED = 2,
};
enum LaunchReplyFlags : int32_t {
  REPLY_PIDFD = 1,
  REPLY_WATCHED = 2,
};

struct LaunchReply {
  uint64_t task;
  int32_t pid;
  int32_t stage;
  int32_t err;
  int32_t kind;
  int32_t flags;
  int32_t pad;
};

// Where the launcher keeps the pgroup guardian's pipe, when it was given one
// (pardo-shepherd --launcher --guardian-fd).
constexpr int kLaunchGuardianFd = 3;
// Where the launcher keeps the supervisor's epoll set, when it was given it.
constexpr int kLaunchEpollFd = 4;

}  // namespace pardo
