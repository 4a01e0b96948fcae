// System calls without libc: the result, or -errno; errno is never written. For code that
// runs where libc cannot be trusted or is absent: a child sharing the spawning thread's
// memory and TLS between clone and exec (spawn.cpp), and the freestanding pardo-shepherd
// (shepherd/).
//
// engine/raw/ is the one place both of them draw on, and it is a folder of its own so
// that this shows: what is here must stay callable from either (no libc, no allocation,
// no errno, no exceptions), which the rest of the engine need not be.
#pragma once

#include <sys/syscall.h>

// What older headers may lack.
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#if !defined(__x86_64__) && !defined(__aarch64__)
#include <errno.h>
#include <unistd.h>
#endif

namespace pardo {

#if defined(__x86_64__)
inline long sys6(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  long ret;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "0"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
#elif defined(__aarch64__)
inline long sys6(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  register long x8 __asm__("x8") = n;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  register long x4 __asm__("x4") = e;
  register long x5 __asm__("x5") = f;
  __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
  return x0;
}
#else
// Elsewhere through libc (callers there have an errno of their own).
inline long sys6(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  long r = syscall(n, a, b, c, d, e, f);
  return r < 0 ? -errno : r;
}
#endif

template <class... A>
inline long sys(long n, A... a) {
  return sys6(n, (long)a...);
}

}  // namespace pardo
