/* A CPU hog for loaded measurements: spins until killed, or until alarm(SECONDS)
 * fires (argv[1], default 600), so a crashed benchmark never leaves it running. */
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 600);
    volatile unsigned long x = 0;
    for (;;) x++;
}
