/* The zoo: adversarial child programs for pardo's process-lifetime tests.
 *
 * usage: zoo MODE TOKEN [ARG...]
 *
 * Every process of every mode carries TOKEN: in argv (fork keeps argv) and in the
 * environment variable PARDO_ZOO_TOKEN that the caller sets, so a survivor is found by
 * scanning /proc/PID/cmdline and /proc/PID/environ. Every process arms its own alarm()
 * first thing (alarms are not inherited across fork, so zfork() re-arms it in the child):
 * a broken supervisor can leave the machine dirty for ALARM_S seconds at most.
 *
 * Processes that must be in place before the deadline (or before the leader exits)
 * report readiness through a pipe; the leader waits for all of them, so a test never
 * passes just because it killed a tree before the tree had escaped.
 *
 * Build: gcc -O1 -o zoo zoo.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned alarm_s = 25;

static void die(const char *what) {
    perror(what);
    _exit(111);
}

static pid_t zfork(void) {
    pid_t p = fork();
    if (p < 0)
        die("fork");
    if (p == 0)
        alarm(alarm_s);
    return p;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Wait here until the alarm (or pardo) ends us. */
static void hang(void) {
    for (;;)
        pause();
}

static void write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

static void say(int fd, const char *s) { write_all(fd, s, strlen(s)); }

/* Readiness: children write one byte each, the leader reads them all. */
static int ready_pipe[2];

static void ready_open(void) {
    if (pipe(ready_pipe) < 0)
        die("pipe");
}

static void ready_signal(void) {
    write_all(ready_pipe[1], "r", 1);
}

static void ready_wait(int n) {
    char c;
    close(ready_pipe[1]);
    for (int got = 0; got < n;) {
        ssize_t r = read(ready_pipe[0], &c, 1);
        if (r == 1)
            got++;
        else if (r < 0 && errno == EINTR)
            continue;
        else
            die("ready_wait");
    }
    close(ready_pipe[0]);
}

/* Leader sleeps; 3 children, each with 3 grandchildren, all sleeping. */
static int mode_tree(void) {
    ready_open();
    for (int i = 0; i < 3; i++) {
        if (zfork() == 0) {
            for (int j = 0; j < 3; j++) {
                if (zfork() == 0) {
                    ready_signal();
                    hang();
                }
            }
            ready_signal();
            hang();
        }
    }
    ready_wait(12);
    say(1, "tree ready\n");
    hang();
    return 0;
}

/* A grandchild writes to stdout and keeps it open; the leader exits 0 at once. */
static int mode_holdout(void) {
    ready_open();
    if (zfork() == 0) {
        say(1, "grandchild\n");
        ready_signal();
        hang();
    }
    ready_wait(1);
    say(1, "leader\n");
    return 0;
}

/* Classic double fork: A does setsid, forks B and exits; B keeps stdio and sleeps. */
static int mode_daemon(void) {
    ready_open();
    pid_t a = zfork();
    if (a == 0) {
        setsid();
        if (zfork() == 0) {
            ready_signal();
            hang();
        }
        _exit(0);
    }
    ready_wait(1);
    waitpid(a, NULL, 0);
    say(1, "daemon ready\n");
    return 0;
}

/* A child leaves the session (setsid) or the process group (setpgid); leader sleeps. */
static int mode_escape(int use_setsid) {
    ready_open();
    if (zfork() == 0) {
        if (use_setsid ? setsid() < 0 : setpgid(0, 0) < 0)
            die("escape");
        ready_signal();
        hang();
    }
    ready_wait(1);
    say(1, "escaped\n");
    hang();
    return 0;
}

/* The whole tree ignores SIGTERM: only SIGKILL after the grace period ends it. */
static int mode_termignore(void) {
    signal(SIGTERM, SIG_IGN);
    ready_open();
    for (int i = 0; i < 4; i++) {
        if (zfork() == 0) {
            ready_signal();
            hang();
        }
    }
    ready_wait(4);
    say(1, "ignoring TERM\n");
    hang();
    return 0;
}

/* Three "hoppers", each forever forking a child into a new session and exiting, so the
 * live process keeps changing pid and session while pardo kills the tree (a tree walk
 * that reads the children and then signals them always lags one hop behind). A hop
 * every 5 ms keeps the number of processes made bounded (~200 per second per hopper). */
static int mode_hopper(void) {
    ready_open();
    for (int i = 0; i < 3; i++) {
        if (zfork() == 0) {
            ready_signal();
            for (;;) {
                if (zfork() != 0)
                    _exit(0);
                setsid();
                sleep_ms(5);
            }
        }
    }
    ready_wait(3);
    say(1, "hopping\n");
    hang();
    return 0;
}

/* A child replaces itself with /bin/sleep: the token survives only in its environment
 * (and the alarm survives exec). */
static int mode_execsleep(void) {
    ready_open();
    if (zfork() == 0) {
        ready_signal();
        close(ready_pipe[1]);
        execl("/bin/sleep", "sleep", "30", (char *)NULL);
        die("execl");
    }
    ready_wait(1);
    sleep_ms(50);  /* let the exec happen */
    say(1, "exec done\n");
    hang();
    return 0;
}

/* Leader and child stop themselves (SIGSTOP): SIGTERM stays pending on a stopped
 * process, so only SIGKILL (or a SIGCONT after the TERM) ends them. */
static int mode_stopped(void) {
    ready_open();
    if (zfork() == 0) {
        ready_signal();
        raise(SIGSTOP);
        hang();
    }
    ready_wait(1);
    say(1, "stopping\n");
    raise(SIGSTOP);
    hang();
    return 0;
}

static void on_term(int sig) {
    (void)sig;
    say(1, "got TERM\n");
    _exit(0);
}

/* Handles SIGTERM by writing a line and exiting: the output after TERM is kept. */
static int mode_graceful(void) {
    signal(SIGTERM, on_term);
    say(1, "waiting\n");
    hang();
    return 0;
}

/* Bounded storm: 1 + 8 + 64 processes, and every leaf keeps forking short-lived
 * children and reaping them, so pids appear and vanish while pardo kills the tree.
 * At most 1 + 8 + 64 + 64 = 137 processes live at once (PID 1 on the test machine may
 * not reap orphans, so the storm stays small and reaps its own). */
static int mode_forkstorm(void) {
    ready_open();
    for (int i = 0; i < 8; i++) {
        if (zfork() == 0) {
            for (int j = 0; j < 8; j++) {
                if (zfork() == 0) {
                    ready_signal();
                    for (;;) {
                        pid_t c = fork();
                        if (c == 0)
                            _exit(0);
                        if (c > 0)
                            waitpid(c, NULL, 0);
                        else
                            sleep_ms(5);
                    }
                }
            }
            hang();
        }
    }
    ready_wait(64);
    say(1, "storm ready\n");
    hang();
    return 0;
}

/* Leader and grandchild close stdin/stdout/stderr early; leader exits 7 later. */
static int mode_closestdio(void) {
    ready_open();
    if (zfork() == 0) {
        close(0);
        close(1);
        close(2);
        ready_signal();
        hang();
    }
    ready_wait(1);
    close(0);
    close(1);
    close(2);
    sleep_ms(300);
    return 7;
}

/* Leaves zombies behind: a child that never reaps 20 children, and the leader's own
 * 5 unreaped children when it exits. */
static int mode_zombies(void) {
    ready_open();
    if (zfork() == 0) {
        for (int i = 0; i < 20; i++)
            if (zfork() == 0)
                _exit(0);
        ready_signal();
        hang();
    }
    for (int i = 0; i < 5; i++)
        if (zfork() == 0)
            _exit(0);
    ready_wait(1);
    sleep_ms(100);
    say(1, "zombies made\n");
    return 0;
}

/* The flood pattern: a block of a prime length, so a dropped or repeated chunk shows. */
#define FLOOD_BLOCK 65521
static void flood_block(unsigned char *b) {
    for (int j = 0; j < FLOOD_BLOCK; j++)
        b[j] = (unsigned char)(j * 31 + 7);
}

/* flood OUT_MIB ERR_MIB: write OUT_MIB MiB to stdout and ERR_MIB MiB to stderr,
 * interleaved, so the reader must drain both pipes at once. */
static int mode_flood(int argc, char **argv) {
    long out = (argc > 3 ? atol(argv[3]) : 256) << 20;
    long err = (argc > 4 ? atol(argv[4]) : 32) << 20;
    static unsigned char block[FLOOD_BLOCK];
    flood_block(block);
    long out_done = 0, err_done = 0;
    while (out_done < out || err_done < err) {
        if (out_done < out) {
            long n = out - out_done < FLOOD_BLOCK ? out - out_done : FLOOD_BLOCK;
            write_all(1, block, (size_t)n);
            out_done += n;
        }
        if (err_done < err) {
            long n = err - err_done < FLOOD_BLOCK ? err - err_done : FLOOD_BLOCK;
            write_all(2, block, (size_t)n);
            err_done += n;
        }
    }
    return 0;
}

/* Every byte value: stdout = 0..255 repeated 4096 times, stderr = 255..0 times 64. */
static int mode_binary(void) {
    unsigned char up[256], down[256];
    for (int i = 0; i < 256; i++) {
        up[i] = (unsigned char)i;
        down[i] = (unsigned char)(255 - i);
    }
    for (int i = 0; i < 4096; i++)
        write_all(1, up, sizeof up);
    for (int i = 0; i < 64; i++)
        write_all(2, down, sizeof down);
    return 0;
}

static int mode_exit208(void) {
    say(1, "out\n");
    say(2, "err\n");
    return 208;
}

static int mode_segv(void) {
    say(1, "before\n");
    *(volatile int *)0 = 1;
    raise(SIGSEGV);
    return 0;
}

/* A busy loop to saturate a core (the loaded half of the matrix). */
static int mode_busy(void) {
    volatile uint64_t x = 0;
    for (;;)
        x++;
    return 0;
}

/* alloc MIB: allocate and touch MIB MiB; exit 3 if the allocation is refused. */
static int mode_alloc(int argc, char **argv) {
    long mib = argc > 3 ? atol(argv[3]) : 64;
    char *p = malloc((size_t)mib << 20);
    if (!p) {
        say(2, "allocation refused\n");
        return 3;
    }
    for (long i = 0; i < (mib << 20); i += 4096)
        p[i] = 1;
    say(1, "allocated\n");
    return 0;
}

/* The leader exits at once; a grandchild writes "late" 500 ms later and exits. */
static int mode_lingerer(void) {
    if (zfork() == 0) {
        sleep_ms(500);
        say(1, "late\n");
        _exit(0);
    }
    say(1, "leader\n");
    return 0;
}

int main(int argc, char **argv) {
    const char *a = getenv("PARDO_ZOO_ALARM");
    if (a && atoi(a) > 0)
        alarm_s = (unsigned)atoi(a);
    alarm(alarm_s);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODE TOKEN [ARG...]\n", argv[0]);
        return 2;
    }
    const char *m = argv[1];
    if (!strcmp(m, "tree"))
        return mode_tree();
    if (!strcmp(m, "holdout"))
        return mode_holdout();
    if (!strcmp(m, "daemon"))
        return mode_daemon();
    if (!strcmp(m, "setsid"))
        return mode_escape(1);
    if (!strcmp(m, "setpgid"))
        return mode_escape(0);
    if (!strcmp(m, "termignore"))
        return mode_termignore();
    if (!strcmp(m, "hopper"))
        return mode_hopper();
    if (!strcmp(m, "execsleep"))
        return mode_execsleep();
    if (!strcmp(m, "stopped"))
        return mode_stopped();
    if (!strcmp(m, "graceful"))
        return mode_graceful();
    if (!strcmp(m, "forkstorm"))
        return mode_forkstorm();
    if (!strcmp(m, "closestdio"))
        return mode_closestdio();
    if (!strcmp(m, "zombies"))
        return mode_zombies();
    if (!strcmp(m, "flood"))
        return mode_flood(argc, argv);
    if (!strcmp(m, "binary"))
        return mode_binary();
    if (!strcmp(m, "exit208"))
        return mode_exit208();
    if (!strcmp(m, "segv"))
        return mode_segv();
    if (!strcmp(m, "busy"))
        return mode_busy();
    if (!strcmp(m, "alloc"))
        return mode_alloc(argc, argv);
    if (!strcmp(m, "lingerer"))
        return mode_lingerer();
    fprintf(stderr, "zoo: unknown mode %s\n", m);
    return 2;
}
