// Test-only fault injection. The engine's C++ tests build it with -DPARDO_FAULT_INJECTION
// (tests/test_engine_cpp.py; CMake's PARDO_ENGINE_TESTS) and make chosen calls of a checked
// system call fail, to prove that the engine copes with what the kernel may refuse. In
// every other build each hook is a constant false that the compiler removes.
#pragma once

#ifdef PARDO_FAULT_INJECTION
#include <errno.h>

#include <atomic>
#endif

namespace pardo {
namespace fault {

// The calls a test can make fail: the ones whose failure changes what the supervisor does.
enum Call : int { EPOLL_ADD, EPOLL_MOD, TIMERFD_SETTIME, CGROUP_FREEZE, N_CALLS };

#ifdef PARDO_FAULT_INJECTION
struct Plan {
  std::atomic<int> skip{0}, count{0}, err{0}, failed{0};
};
inline Plan g_plans[N_CALLS];

// From now on let `skip` calls of `call` pass, then fail the next `count` with `err`.
inline void arm(Call call, int skip, int count, int err) {
  Plan& p = g_plans[call];
  p.count = 0;
  p.failed = 0;
  p.err = err;
  p.skip = skip;
  p.count = count;
}
inline void disarm(Call call) { g_plans[call].count = 0; }
// How many calls of `call` failed since it was armed.
inline int failed(Call call) { return g_plans[call].failed.load(); }

// True, with errno set, when this call of `call` is to fail instead of being made.
inline bool hit(Call call) {
  Plan& p = g_plans[call];
  if (p.count.load() <= 0) return false;
  if (p.skip.fetch_sub(1) > 0) return false;
  if (p.count.fetch_sub(1) <= 0) return false;
  ++p.failed;
  errno = p.err.load();
  return true;
}
// The errno a hit of `call` fails with, for raw calls that return -errno (raw/).
inline int err(Call call) { return g_plans[call].err.load(); }
#else
constexpr bool hit(Call) { return false; }
constexpr int err(Call) { return 0; }
#endif

}  // namespace fault
}  // namespace pardo
