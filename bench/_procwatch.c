/* Exact process-exit times from the kernel, for deadline-to-dead latency.
 *
 * Subscribes to the proc connector (netlink, needs CAP_NET_ADMIN), which reports
 * every fork and exit on the machine with a CLOCK_MONOTONIC timestamp taken in the
 * kernel at the event. That gives, without polling /proc and without adding load,
 * the moment the last process of a tree died, and which processes never did.
 *
 * Driven by lines on stdin, answering one line on stdout per command:
 *   begin                  forget earlier events -> "ok"
 *   end ROOT DEADLINE_NS RETURN_NS
 *                          replay the events since begin for the tree grown by
 *                          forks from ROOT (by fork lineage, so reparenting does not
 *                          hide anyone) -> "ROOT_FORK_NS LAST_EXIT_NS TOTAL AT_DEADLINE
 *                          FORKS_AFTER LOST LAST_PID LAST_FORK_NS AT_RETURN ALIVE" where
 *                          LAST_EXIT_NS is 0 while any process of the tree lives,
 *                          AT_DEADLINE is how many were alive at DEADLINE_NS, FORKS_AFTER
 *                          counts forks at or after it, LOST is 1 if the kernel dropped
 *                          events (ENOBUFS), LAST_PID is the process that died last and
 *                          LAST_FORK_NS when it was forked (to tell a slow kill from a
 *                          fork that raced it), AT_RETURN how many were alive at
 *                          RETURN_NS (when the caller's call returned), and ALIVE lists
 *                          the live pids comma-separated, or "-".
 * Usage: _procwatch ALARM_S   (it exits when stdin closes, or at the alarm)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct event {
    uint64_t ts;
    int32_t parent; /* fork: parent tgid; exit: -1 */
    int32_t pid;    /* fork: child tgid; exit: tgid that ended */
};

static struct event *log_;
static size_t log_len, log_cap;
static int lost;

static void record(uint64_t ts, int32_t parent, int32_t pid) {
    if (log_len == log_cap) {
        log_cap = log_cap ? log_cap * 2 : 65536;
        log_ = realloc(log_, log_cap * sizeof *log_);
        if (!log_) abort();
    }
    log_[log_len++] = (struct event){ts, parent, pid};
}

static void drain(int sock) {
    char buf[1 << 16] __attribute__((aligned(NLMSG_ALIGNTO)));
    for (;;) {
        ssize_t n = recv(sock, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == ENOBUFS) { lost = 1; continue; }
            if (errno == EINTR) continue;
            return; /* EAGAIN: nothing more queued */
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type != NLMSG_DONE) continue;
            struct cn_msg *cn = NLMSG_DATA(h);
            if (cn->id.idx != CN_IDX_PROC || cn->id.val != CN_VAL_PROC) continue;
            struct proc_event *ev = (struct proc_event *)cn->data;
            if (ev->what == PROC_EVENT_FORK) {
                /* thread creation is reported as a fork too: keep new processes only */
                if (ev->event_data.fork.child_pid == ev->event_data.fork.child_tgid)
                    record(ev->timestamp_ns, ev->event_data.fork.parent_tgid,
                           ev->event_data.fork.child_tgid);
            } else if (ev->what == PROC_EVENT_EXIT) {
                if (ev->event_data.exit.process_pid == ev->event_data.exit.process_tgid)
                    record(ev->timestamp_ns, -1, ev->event_data.exit.process_pid);
            }
        }
    }
}

static int find(const int32_t *set, size_t n, int32_t pid) {
    for (size_t i = 0; i < n; i++)
        if (set[i] == pid) return (int)i;
    return -1;
}

static void replay(int32_t root, uint64_t deadline, uint64_t returned) {
    size_t cap = 1024, n = 1;
    int32_t *live = malloc(cap * sizeof *live);
    uint64_t *born = malloc(cap * sizeof *born);
    live[0] = root;
    born[0] = 0;
    int32_t last_pid = 0;
    uint64_t last_fork = 0;
    uint64_t root_fork = 0, last_exit = 0;
    long total = 1, at_deadline = -1, at_return = -1, forks_after = 0;
    for (size_t i = 0; i < log_len && n > 0; i++) {
        struct event *e = &log_[i];
        if (at_deadline < 0 && e->ts >= deadline) at_deadline = (long)n;
        if (at_return < 0 && e->ts >= returned) at_return = (long)n;
        if (e->parent >= 0) {
            if (e->pid == root) root_fork = born[0] = e->ts;
            if (find(live, n, e->parent) < 0) continue;
            if (n == cap) {
                cap *= 2;
                live = realloc(live, cap * sizeof *live);
                born = realloc(born, cap * sizeof *born);
            }
            born[n] = e->ts;
            live[n++] = e->pid;
            total++;
            if (e->ts >= deadline) forks_after++;
        } else {
            int k = find(live, n, e->pid);
            if (k < 0) continue;
            last_pid = live[k];
            last_fork = born[k];
            live[k] = live[--n];
            born[k] = born[n];
            if (n == 0) last_exit = e->ts;
        }
    }
    if (at_deadline < 0) at_deadline = (long)n;
    if (at_return < 0) at_return = (long)n;
    printf("%llu %llu %ld %ld %ld %d %d %llu %ld ", (unsigned long long)root_fork,
           (unsigned long long)last_exit, total, at_deadline, forks_after, lost, last_pid,
           (unsigned long long)last_fork, at_return);
    if (n == 0) printf("-");
    for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", live[i]);
    printf("\n");
    fflush(stdout);
    free(live);
    free(born);
}

int main(int argc, char **argv) {
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 600);
    int sock = socket(PF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
    if (sock < 0) { perror("socket(NETLINK_CONNECTOR)"); return 1; }
    /* A fork storm queues events faster than a loaded CPU lets us read them. */
    int rcv = 64 << 20;
    if (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
        setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = CN_IDX_PROC};
    if (bind(sock, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); return 1; }
    struct {
        struct nlmsghdr h;
        struct cn_msg cn;
        enum proc_cn_mcast_op op;
    } __attribute__((packed)) req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = NLMSG_DONE;
    req.cn.id.idx = CN_IDX_PROC;
    req.cn.id.val = CN_VAL_PROC;
    req.cn.len = sizeof req.op;
    req.op = PROC_CN_MCAST_LISTEN;
    if (send(sock, &req, sizeof req, 0) < 0) { perror("send(PROC_CN_MCAST_LISTEN)"); return 1; }
    printf("ready\n");
    fflush(stdout);

    char line[256];
    struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            perror("poll");
            return 1;
        }
        if (fds[1].revents) drain(sock);
        if (!fds[0].revents) continue;
        if (!fgets(line, sizeof line, stdin)) return 0;
        drain(sock);
        if (strncmp(line, "begin", 5) == 0) {
            log_len = 0;
            lost = 0;
            printf("ok\n");
            fflush(stdout);
        } else if (strncmp(line, "end ", 4) == 0) {
            int root;
            unsigned long long deadline, returned;
            if (sscanf(line + 4, "%d %llu %llu", &root, &deadline, &returned) != 3) return 2;
            replay(root, deadline, returned);
        } else {
            return 2;
        }
    }
}
