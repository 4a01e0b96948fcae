/* kernel_profile: run a program as if on an older kernel or in a Docker container.
 *
 *   kernel_profile PROFILE [--hide=WHAT,...] PROGRAM ARGS...
 *
 * Installs a seccomp filter that answers the system calls pardo relies on the way the
 * named kernel (or Docker's default seccomp profile) does, then execs PROGRAM. The filter
 * is inherited by everything PROGRAM starts, tasks included.
 *
 *   4.18    RHEL 8: no clone3, pidfd_open, pidfd_send_signal, pidfd_getfd, close_range,
 *           openat2, faccessat2, epoll_pwait2 (ENOSYS); clone(CLONE_PIDFD) and
 *           waitid(P_PIDFD) -> EINVAL; preadv2(RWF_NOWAIT) -> EOPNOTSUPP (pipes got it in
 *           5.9); cgroup.kill and cgroup.freeze hidden.
 *   5.4     Ubuntu 20.04: clone3 without CLONE_CLEAR_SIGHAND (5.5) or CLONE_INTO_CGROUP
 *           (5.7): any flag above the low 32 bits -> EINVAL, a non-zero set_tid or cgroup
 *           field -> E2BIG; close_range, pidfd_getfd, openat2, faccessat2, epoll_pwait2 ->
 *           ENOSYS; preadv2(RWF_NOWAIT) -> EOPNOTSUPP; cgroup.kill hidden.
 *   5.10    Debian 11: close_range(CLOSE_RANGE_CLOEXEC) -> EINVAL (5.11); faccessat2 is
 *           there (5.8), epoll_pwait2 is not (5.11); cgroup.kill hidden.
 *   docker  Docker's default profile (any kernel): clone3 -> ENOSYS (so that programs fall
 *           back to clone), clone/unshare with namespace flags, setns, mount, umount2,
 *           pivot_root, keyctl, add_key, request_key, bpf, perf_event_open, fanotify_init,
 *           open_by_handle_at, userfaultfd -> EPERM (Docker's default errno). Processes
 *           in a container also lack CAP_SYS_NICE etc.; that is a capability matter, not
 *           seccomp, and is emulated by running as user nobody.
 *   noproc  no process can be started (clone without CLONE_THREAD, fork, vfork -> EPERM;
 *           clone3 -> ENOSYS): a host where pardo can start no task and must say so.
 *   host    no filter (a control run through the same launcher).
 *
 * clone3's flags live in memory, which a seccomp filter cannot read. The 5.4 profile
 * therefore sends clone3 to a user-space listener (SECCOMP_RET_USER_NOTIF): a helper
 * process, forked before the filter exists so that it is not itself under it, reads the
 * struct clone_args from /proc/PID/mem and answers EINVAL/E2BIG or lets the call go on.
 * It exits when no process under the filter is left (the listener reports POLLHUP).
 *
 * A seccomp filter cannot hide a file. What the kernel lacks in cgroupfs (cgroup.kill,
 * 5.14; cgroup.freeze, 5.2) is hidden through PARDO_TEST_HIDE, which the engine reads once
 * at start: a comma-separated list of cgroup files, or "cgroup2" for a cgroup v1 host.
 * A mount namespace could not do it: pardo creates its leaves (and their cgroup.kill)
 * after start, and an unprivileged user may not make one anyway. --hide adds to the
 * profile's list.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "kernel_profile: x86-64 and aarch64 only"
#endif

/* Numbers from the generic table, so that old headers do not matter. */
#define NR_pidfd_send_signal 424
#define NR_pidfd_open 434
#define NR_clone3 435
#define NR_close_range 436
#define NR_openat2 437
#define NR_pidfd_getfd 438
#define NR_faccessat2 439
#define NR_epoll_pwait2 441
#define F_CLONE_PIDFD 0x1000
#define F_CLOSE_RANGE_CLOEXEC 4
#define F_RWF_NOWAIT 8
#define F_P_PIDFD 3
#define NS_FLAGS 0x7e020000 /* CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET */

enum { ANY = -1 };
enum Test { ALWAYS, ARG_HAS, ARG_LACKS, ARG_EQ };
struct Rule {
  int nr;
  enum Test test;
  int arg;       /* which argument (low 32 bits) */
  uint32_t val;  /* mask for ARG_HAS and ARG_LACKS, value for ARG_EQ */
  uint32_t ret;  /* SECCOMP_RET_* | data */
};

#define ERR(e) (SECCOMP_RET_ERRNO | (e))

static struct sock_filter prog[512];
static int plen;

static void emit(struct sock_filter f) {
  if (plen >= (int)(sizeof prog / sizeof prog[0])) {
    fprintf(stderr, "kernel_profile: filter too long\n");
    exit(125);
  }
  prog[plen++] = f;
}

/* One rule: load nr, skip unless equal; optionally test an argument; return. */
static void emit_rule(const struct Rule* r) {
  emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
  if (r->test == ALWAYS) {
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, 1));
  } else {
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, 3));
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                      offsetof(struct seccomp_data, args) + 8 * r->arg));
    if (r->test == ARG_HAS)
      emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, r->val, 0, 1));
    else if (r->test == ARG_LACKS)
      emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, r->val, 1, 0));
    else
      emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, r->val, 0, 1));
  }
  emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, r->ret));
}

static const struct Rule k418[] = {
    {NR_clone3, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_pidfd_open, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_pidfd_send_signal, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_pidfd_getfd, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_close_range, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_openat2, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_faccessat2, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_epoll_pwait2, ALWAYS, 0, 0, ERR(ENOSYS)},
    {__NR_clone, ARG_HAS, 0, F_CLONE_PIDFD, ERR(EINVAL)},
    {__NR_waitid, ARG_EQ, 0, F_P_PIDFD, ERR(EINVAL)},
    {__NR_preadv2, ARG_HAS, 5, F_RWF_NOWAIT, ERR(EOPNOTSUPP)},
    {0, 0, 0, 0, 0}};
static const struct Rule k54[] = {
    {NR_clone3, ALWAYS, 0, 0, SECCOMP_RET_USER_NOTIF},
    {NR_close_range, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_openat2, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_pidfd_getfd, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_faccessat2, ALWAYS, 0, 0, ERR(ENOSYS)},
    {NR_epoll_pwait2, ALWAYS, 0, 0, ERR(ENOSYS)},
    {__NR_preadv2, ARG_HAS, 5, F_RWF_NOWAIT, ERR(EOPNOTSUPP)},
    {0, 0, 0, 0, 0}};
static const struct Rule k510[] = {
    {NR_close_range, ARG_HAS, 2, F_CLOSE_RANGE_CLOEXEC, ERR(EINVAL)},
    {NR_epoll_pwait2, ALWAYS, 0, 0, ERR(ENOSYS)},
    {0, 0, 0, 0, 0}};
static const struct Rule kdocker[] = {
    {NR_clone3, ALWAYS, 0, 0, ERR(ENOSYS)},
    {__NR_clone, ARG_HAS, 0, NS_FLAGS, ERR(EPERM)},
    {__NR_unshare, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_setns, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_mount, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_umount2, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_pivot_root, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_keyctl, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_add_key, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_request_key, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_bpf, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_perf_event_open, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_fanotify_init, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_open_by_handle_at, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_userfaultfd, ALWAYS, 0, 0, ERR(EPERM)},
    {0, 0, 0, 0, 0}};

/* No process can be started at all (threads can): a host where pardo must refuse. */
static const struct Rule knoproc[] = {
    {NR_clone3, ALWAYS, 0, 0, ERR(ENOSYS)}, /* so that glibc makes threads with clone */
    {__NR_clone, ARG_LACKS, 0, CLONE_THREAD, ERR(EPERM)},
#ifdef __NR_fork
    {__NR_fork, ALWAYS, 0, 0, ERR(EPERM)},
    {__NR_vfork, ALWAYS, 0, 0, ERR(EPERM)},
#endif
    {0, 0, 0, 0, 0}};

struct Profile {
  const char* name;
  const struct Rule* rules;
  const char* hide;
};
static const struct Profile profiles[] = {
    {"4.18", k418, "cgroup.kill,cgroup.freeze"},
    {"5.4", k54, "cgroup.kill"},
    {"5.10", k510, "cgroup.kill"},
    {"docker", kdocker, ""},
    {"noproc", knoproc, ""},
    {"host", NULL, ""},
    {NULL, NULL, NULL}};

/* ------------------------------------------------------------ the clone3 listener (5.4) */

struct clone_args_v2 {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
      set_tid, set_tid_size, cgroup;
};

/* What a 5.4 kernel says to this clone3: 0 to let it go on, else an errno. */
static int judge_clone3(int pid, uint64_t addr, uint64_t size) {
  struct clone_args_v2 ca;
  char path[64];
  if (size < 64) return EINVAL;
  memset(&ca, 0, sizeof ca);
  snprintf(path, sizeof path, "/proc/%d/mem", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return EFAULT;
  size_t n = size < sizeof ca ? size : sizeof ca;
  ssize_t got = pread(fd, &ca, n, (off_t)addr);
  close(fd);
  if (got != (ssize_t)n) return EFAULT;
  if (ca.flags >> 32) return EINVAL;                          /* CLONE_CLEAR_SIGHAND, _INTO_CGROUP */
  if (size > 64 && (ca.set_tid || ca.set_tid_size || ca.cgroup)) return E2BIG;  /* v0 only */
  return 0;
}

static void serve(int listener) {
  struct seccomp_notif req;
  struct seccomp_notif_resp resp;
  alarm(1800); /* a bound even if a test leaves a filtered process behind */
  for (;;) {
    struct pollfd p = {listener, POLLIN, 0};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      _exit(0);
    }
    if (p.revents & (POLLHUP | POLLERR)) _exit(0); /* no process under the filter left */
    memset(&req, 0, sizeof req);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) continue;
    memset(&resp, 0, sizeof resp);
    resp.id = req.id;
    int e = judge_clone3((int)req.pid, req.data.args[0], req.data.args[1]);
    /* The caller may have gone (or the id been reused) while we read its memory. */
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) < 0) continue;
    if (e) {
      resp.error = -e;
    } else {
      resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    }
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
  }
}

static void send_fd(int sock, int fd) {
  char buf[CMSG_SPACE(sizeof(int))];
  memset(buf, 0, sizeof buf);
  char one = 1;
  struct iovec iov = {&one, 1};
  struct msghdr m = {0};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = buf;
  m.msg_controllen = sizeof buf;
  struct cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  if (sendmsg(sock, &m, 0) < 0) {
    perror("kernel_profile: sendmsg");
    exit(125);
  }
}

static int recv_fd(int sock) {
  char buf[CMSG_SPACE(sizeof(int))];
  char one;
  struct iovec iov = {&one, 1};
  struct msghdr m = {0};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = buf;
  m.msg_controllen = sizeof buf;
  if (recvmsg(sock, &m, 0) <= 0) return -1;
  struct cmsghdr* c = CMSG_FIRSTHDR(&m);
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

/* Fork the listener's server before the filter exists (it must not be under it), as a
 * grandchild so that PROGRAM does not inherit an unknown child. Returns our socket end. */
static int start_server(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    perror("kernel_profile: socketpair");
    exit(125);
  }
  pid_t c = fork();
  if (c < 0) {
    perror("kernel_profile: fork");
    exit(125);
  }
  if (c == 0) {
    close(sv[0]);
    if (fork() != 0) _exit(0);
    setsid();
    for (int fd = 0; fd < 3; ++fd) {
      int n = open("/dev/null", O_RDWR);
      if (n >= 0 && n != fd) {
        dup2(n, fd);
        close(n);
      }
    }
    int listener = recv_fd(sv[1]);
    close(sv[1]);
    if (listener < 0) _exit(1);
    serve(listener);
    _exit(0);
  }
  close(sv[1]);
  waitpid(c, NULL, 0);
  return sv[0];
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: kernel_profile 4.18|5.4|5.10|docker|noproc|host [--hide=X,...] PROGRAM ARGS...\n");
    return 125;
  }
  const struct Profile* pr = NULL;
  for (const struct Profile* p = profiles; p->name; ++p)
    if (strcmp(p->name, argv[1]) == 0) pr = p;
  if (!pr) {
    fprintf(stderr, "kernel_profile: unknown profile '%s'\n", argv[1]);
    return 125;
  }
  int i = 2;
  char hide[512];
  snprintf(hide, sizeof hide, "%s", pr->hide);
  for (; i < argc && strncmp(argv[i], "--hide=", 7) == 0; ++i) {
    size_t n = strlen(hide);
    snprintf(hide + n, sizeof hide - n, "%s%s", n ? "," : "", argv[i] + 7);
  }
  if (i >= argc) {
    fprintf(stderr, "kernel_profile: no program given\n");
    return 125;
  }
  if (hide[0])
    setenv("PARDO_TEST_HIDE", hide, 1);
  else
    unsetenv("PARDO_TEST_HIDE");
  setenv("PARDO_TEST_KERNEL_PROFILE", pr->name, 1);

  if (pr->rules) {
    int notify = 0;
    plen = 0;
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    for (const struct Rule* r = pr->rules; r->nr; ++r) {
      emit_rule(r);
      if (r->ret == SECCOMP_RET_USER_NOTIF) notify = 1;
    }
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    struct sock_fprog fp = {(unsigned short)plen, prog};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
      perror("kernel_profile: PR_SET_NO_NEW_PRIVS");
      return 125;
    }
    int sock = notify ? start_server() : -1;
    long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                      notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &fp);
    if (fd < 0) {
      perror("kernel_profile: seccomp");
      return 125;
    }
    if (notify) {
      send_fd(sock, (int)fd);
      close((int)fd);
      close(sock);
    }
  }
  execvp(argv[i], argv + i);
  fprintf(stderr, "kernel_profile: cannot run %s: %s\n", argv[i], strerror(errno));
  return 127;
}
