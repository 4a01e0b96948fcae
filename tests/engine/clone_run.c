/* clone_run: engine/clone.S's two entry points, each starting a child that runs fn(arg) on
 * a stack of its own: pardo_clone_run (clone) fork-style and vfork-style, and
 * pardo_clone3_run (clone3) fork-style. The child returns arg + 1 as its exit status; a
 * line per start says what came back. Built by tests/engine/test_clone_asm.py for this
 * machine and, under qemu's user-mode emulation, for aarch64. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern long pardo_clone_run(unsigned long flags, void* stack_top, int (*fn)(void*), void* arg,
                            int* child_tid);
extern long pardo_clone3_run(void* args, unsigned long size, int (*fn)(void*), void* arg);

static char stack[65536] __attribute__((aligned(64)));

/* Uses its stack (a frame of a few KiB) before it returns. */
static int fn(void* a) {
  volatile char buf[3000];
  memset((char*)buf, 1, sizeof buf);
  return *(int*)a + buf[1234];
}

static void report(const char* what, long pid) {
  int st = 0;
  if (pid > 0) waitpid((pid_t)pid, &st, __WALL);
  if (pid > 0 && WIFEXITED(st))
    printf("%s exit %d\n", what, WEXITSTATUS(st));
  else
    printf("%s failed %ld\n", what, pid);
}

int main(void) {
  alarm(20);
  int arg = 41;
  report("clone", pardo_clone_run(SIGCHLD, stack + sizeof stack, fn, &arg, 0));
  report("clone-vfork",
         pardo_clone_run(SIGCHLD | CLONE_VM | CLONE_VFORK, stack + sizeof stack, fn, &arg, 0));
  struct {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
  } ca;
  memset(&ca, 0, sizeof ca);
  ca.exit_signal = SIGCHLD;
  ca.stack = (uint64_t)(uintptr_t)stack;
  ca.stack_size = sizeof stack;
  report("clone3", pardo_clone3_run(&ca, sizeof ca, fn, &arg));
  return 0;
}
