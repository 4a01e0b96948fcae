// pardo-shepherd: one small program, three roles, chosen by its first argument.
//
//   pardo-shepherd --launcher
//     the launcher, one per supervisor and rung: forks the keepers, which start the
//     shepherd rung's tasks and keep them (launcher.cpp; kept keepers, which serve task
//     after task: keeper_pool.cpp; a keeper for one task: keeper.cpp), and, for the
//     cgroup and pgroup rungs, clones each task as the supervisor's child itself
//   pardo-shepherd --guardian=CGROUP_DIR [--freeze]
//     the cgroup rung's guardian: kills and removes the supervisor's cgroup subtree once
//     the supervisor is gone (guardian.cpp); --freeze: by freezing it, the kernel having
//     no cgroup.kill (Linux 5.2-5.13)
//   pardo-shepherd --guardian-pgroups
//     the pgroup rung's guardian: SIGKILLs the process groups the supervisor still listed
//     once it is gone (guardian.cpp)
//
// One program rather than two: the engine finds one helper beside itself (one path to
// configure and to check), and the guardians cost nothing to carry.
//
// The launcher forks the keepers, each fork copies the launcher's address space, and each
// task starts in its keeper's (whose peak the task's max_rss would count): the program is
// written against the kernel alone (raw/) and, on x86-64, built without libc
// (PARDO_FREESTANDING: its own _start, below), so that space is a few pages, and its
// start-up (the guardians', the launcher's) is only the kernel's.
// Elsewhere it links libc and uses only main() from it.
#include <cstddef>

#include "shepherd/shepherd.hpp"

using namespace pardo;
using namespace pardo::shepherd;

extern "C" int pardo_shepherd_main(int argc, char** argv, char** envp) {
  if (argc >= 2) {
    if (const char* rest = after(argv[1], "--guardian-pgroups"); rest && *rest == '\0')
      return pgroup_guardian_main();
    if (const char* dir = after(argv[1], "--guardian=")) {
      const char* rest = argc >= 3 ? after(argv[2], "--freeze") : nullptr;
      return guardian_main(dir, rest && *rest == '\0');
    }
    if (const char* rest = after(argv[1], "--launcher"); rest && *rest == '\0')
      return launcher_main(envp);
  }
  say("pardo-shepherd is started by pardo's engine; it is not meant to be run by hand.\n");
  return 2;
}

#ifdef PARDO_FREESTANDING
// No libc: the entry point, and the few functions the compiler may call on its own.
extern "C" [[noreturn]] void pardo_shepherd_start(long* sp) {
  int argc = static_cast<int>(sp[0]);
  char** argv = reinterpret_cast<char**>(sp + 1);
  leave(pardo_shepherd_main(argc, argv, argv + argc + 1));
}

__asm__(
    ".text\n"
    ".globl _start\n"
    ".type _start, @function\n"
    "_start:\n"
    "  xor %rbp, %rbp\n"
    "  mov %rsp, %rdi\n"     // argc, argv..., NULL, envp..., NULL
    "  and $-16, %rsp\n"
    "  call pardo_shepherd_start\n"
    "  hlt\n");

extern "C" void* memset(void* d, int c, size_t n) {
  auto* p = static_cast<volatile unsigned char*>(d);  // volatile: not turned into memset
  while (n--) *p++ = static_cast<unsigned char>(c);
  return d;
}

extern "C" void* memcpy(void* d, const void* s, size_t n) {
  auto* p = static_cast<volatile unsigned char*>(d);
  auto* q = static_cast<const unsigned char*>(s);
  while (n--) *p++ = *q++;
  return d;
}

extern "C" void* memmove(void* d, const void* s, size_t n) {
  auto* p = static_cast<volatile unsigned char*>(d);
  auto* q = static_cast<const unsigned char*>(s);
  if (p < q) {
    while (n--) *p++ = *q++;
  } else {
    while (n--) p[n] = q[n];
  }
  return d;
}

extern "C" int memcmp(const void* a, const void* b, size_t n) {
  auto* p = static_cast<const unsigned char*>(a);
  auto* q = static_cast<const unsigned char*>(b);
  for (; n; --n, ++p, ++q)
    if (*p != *q) return *p - *q;
  return 0;
}
#else
int main(int argc, char** argv, char** envp) { return pardo_shepherd_main(argc, argv, envp); }
#endif
