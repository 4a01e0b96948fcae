/* The floor: the fastest a process-launching loop can go on this machine.
 *
 * Keeps INFLIGHT children of PROGRAM running until COUNT have finished, each
 * started with posix_spawn (glibc uses clone(CLONE_VM|CLONE_VFORK), the cheapest
 * way to start a program) and reaped with waitpid. Nothing else: no deadline, no
 * isolation. With -c each child's stdout and stderr go into a pipe that the loop
 * drains until EOF, which is what capturing output costs at the least.
 *
 * Usage: _floor [-c] [-a SECONDS] INFLIGHT COUNT PROGRAM [ARG...]
 * Prints one line: "<count> <elapsed seconds> <CPU seconds>": elapsed is timed with
 * CLOCK_MONOTONIC from the first spawn to the last reap; CPU is user+system time of
 * this loop and of every child it reaped. Exits 1 on any failed spawn or non-zero
 * child exit, so a broken floor never passes for a fast one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct slot {
    pid_t pid;     /* 0 when the slot is free */
    int fd;        /* read end of the capture pipe, -1 when closed */
    int reaped;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static pid_t start(char **argv, int capture, int *fd_out) {
    posix_spawn_file_actions_t fa;
    int p[2] = {-1, -1};
    pid_t pid;
    int rc;

    posix_spawn_file_actions_init(&fa);
    if (capture) {
        if (pipe2(p, O_CLOEXEC) < 0) die("pipe2");
        /* dup2 clears O_CLOEXEC on the target, so only fds 1 and 2 survive exec */
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
        posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    }
    rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        errno = rc;
        die(argv[0]);
    }
    if (capture) close(p[1]);
    *fd_out = p[0];
    return pid;
}

int main(int argc, char **argv) {
    int capture = 0, opt;
    unsigned alarm_s = 600;
    while ((opt = getopt(argc, argv, "+ca:")) != -1) {
        if (opt == 'c') capture = 1;
        else if (opt == 'a') alarm_s = (unsigned)atoi(optarg);
        else return 2;
    }
    if (argc - optind < 3) {
        fprintf(stderr, "usage: _floor [-c] [-a SECONDS] INFLIGHT COUNT PROGRAM [ARG...]\n");
        return 2;
    }
    /* A benchmark helper must never outlive a broken run. */
    alarm(alarm_s);
    int inflight = atoi(argv[optind]);
    long count = atol(argv[optind + 1]);
    char **child_argv = argv + optind + 2;
    if (inflight < 1 || count < 1) return 2;
    if (inflight > count) inflight = (int)count;

    struct slot *slots = calloc((size_t)inflight, sizeof *slots);
    long started = 0, finished = 0;
    int bad = 0;
    double t0 = now();

    if (!capture) {
        /* Plain loop: waitpid(-1) blocks until any child ends, then refill. */
        for (; started < inflight; started++) {
            int fd;
            start(child_argv, 0, &fd);
        }
        while (finished < count) {
            int st;
            pid_t pid = waitpid(-1, &st, 0);
            if (pid < 0) die("waitpid");
            finished++;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
            if (started < count) {
                int fd;
                start(child_argv, 0, &fd);
                started++;
            }
        }
    } else {
        /* Capture loop: a slot is free once its pipe hit EOF and its child was
         * reaped; SIGCHLD arrives through a signalfd in the same epoll set. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (sfd < 0 || ep < 0) die("signalfd/epoll");
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)-1};
        epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
        for (int i = 0; i < inflight; i++, started++) {
            slots[i].pid = start(child_argv, 1, &slots[i].fd);
            ev.data.u64 = (uint64_t)i;
            epoll_ctl(ep, EPOLL_CTL_ADD, slots[i].fd, &ev);
        }
        char buf[65536];
        struct epoll_event evs[64];
        while (finished < count) {
            int n = epoll_wait(ep, evs, 64, -1);
            if (n < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            for (int k = 0; k < n; k++) {
                if (evs[k].data.u64 == (uint64_t)-1) {
                    struct signalfd_siginfo si;
                    while (read(sfd, &si, sizeof si) > 0) {}
                    int st;
                    pid_t pid;
                    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
                        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
                        for (int i = 0; i < inflight; i++)
                            if (slots[i].pid == pid) slots[i].reaped = 1;
                    }
                } else {
                    int i = (int)evs[k].data.u64;
                    ssize_t r = read(slots[i].fd, buf, sizeof buf);
                    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, slots[i].fd, NULL);
                        close(slots[i].fd);
                        slots[i].fd = -1;
                    }
                }
            }
            for (int i = 0; i < inflight; i++) {
                if (slots[i].pid == 0 || slots[i].fd >= 0 || !slots[i].reaped) continue;
                finished++;
                slots[i].pid = 0;
                slots[i].reaped = 0;
                if (started < count) {
                    slots[i].pid = start(child_argv, 1, &slots[i].fd);
                    ev.data.u64 = (uint64_t)i;
                    epoll_ctl(ep, EPOLL_CTL_ADD, slots[i].fd, &ev);
                    started++;
                }
            }
        }
    }
    double elapsed = now() - t0;
    double cpu = 0;
    struct rusage ru;
    int who[2] = {RUSAGE_SELF, RUSAGE_CHILDREN};
    for (int i = 0; i < 2; i++) {
        getrusage(who[i], &ru);
        cpu += ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
               (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    }
    printf("%ld %.6f %.6f\n", finished, elapsed, cpu);
    return bad;
}
