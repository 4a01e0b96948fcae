/* A process tree that keeps growing and churning until it is killed.
 *
 * Usage: _tree TOKEN ALARM_S DEPTH FANOUT LEAF_MIN_MS LEAF_MAX_MS
 *
 * Every node below DEPTH keeps FANOUT children alive: it forks them, and forks a
 * replacement whenever one exits. Leaves (depth DEPTH) sleep a random time between
 * LEAF_MIN_MS and LEAF_MAX_MS and exit. So the tree holds 1 + F + ... + F^D processes
 * and forks continually: a deadline always lands while forks are in flight, which is
 * the race a tree-killer must win. Children fork without exec, so all of them carry
 * TOKEN in their argv (/proc/PID/cmdline), which is how a benchmark finds survivors.
 * SIGTERM keeps its default action (the tree respects it). alarm() is not inherited
 * across fork, so every node arms its own: nothing outlives ALARM_S seconds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned alarm_s;
static int depth_max, fanout, leaf_min_ms, leaf_max_ms;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

__attribute__((noreturn)) static void node(int depth) {
    alarm(alarm_s);
    if (depth >= depth_max) {
        unsigned seed = (unsigned)getpid();
        int span = leaf_max_ms - leaf_min_ms + 1;
        sleep_ms(leaf_min_ms + (int)(rand_r(&seed) % (unsigned)span));
        _exit(0);
    }
    int live = 0;
    for (;;) {
        while (live < fanout) {
            pid_t pid = fork();
            if (pid == 0) node(depth + 1);  /* never returns */
            if (pid < 0) {
                sleep_ms(1);  /* EAGAIN under a pid limit: retry, stay bounded */
                break;
            }
            live++;
        }
        if (wait(NULL) > 0) live--;
        else if (errno == ECHILD) live = 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 7) return 2;
    alarm_s = (unsigned)atoi(argv[2]);
    depth_max = atoi(argv[3]);
    fanout = atoi(argv[4]);
    leaf_min_ms = atoi(argv[5]);
    leaf_max_ms = atoi(argv[6]);
    if (alarm_s < 1 || depth_max < 0 || fanout < 1 || leaf_min_ms < 0 || leaf_max_ms < leaf_min_ms)
        return 2;
    node(0);
    return 0;
}
