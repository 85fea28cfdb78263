/* The filesystem workloads of bench/fs.py, run inside a benchmark guest.
 * Busybox would spend more time forking than the filesystem does under TCG.
 * Each command prints one line: "<seconds> <what it did>".
 *
 *   guestload walk DIR               lstat every entry below DIR (cold or warm)
 *   guestload readall DIR LIST       open, read whole and close each file named in LIST
 *   guestload seq FILE               read FILE start to end in 1 MiB blocks
 *   guestload rand FILE COUNT SEED   COUNT reads of 4 KiB at seeded, 4 KiB-aligned offsets
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long entries;
static long long total_size;

static int visit(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)path, (void)flag, (void)ftw;
    entries++;
    total_size += st->st_size;
    return 0;
}

static char block[1 << 20];

static long long drain(int fd) {
    long long got = 0;
    ssize_t n;
    while ((n = read(fd, block, sizeof block)) > 0)
        got += n;
    if (n < 0) {
        perror("read");
        exit(1);
    }
    return got;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "walk") == 0) {
        double start = now();
        if (nftw(argv[2], visit, 64, FTW_PHYS) != 0) {
            perror("nftw");
            return 1;
        }
        printf("%.6f walk %ld entries %lld bytes\n", now() - start, entries, total_size);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "readall") == 0) {
        FILE *list = fopen(argv[3], "r");
        if (list == NULL || chdir(argv[2]) != 0) {
            perror("readall");
            return 1;
        }
        static char name[8192];
        long files = 0;
        long long bytes = 0;
        double start = now();
        while (fgets(name, sizeof name, list) != NULL) {
            name[strcspn(name, "\n")] = 0;
            int fd = open(name, O_RDONLY);
            if (fd < 0) {
                perror(name);
                return 1;
            }
            bytes += drain(fd);
            close(fd);
            files++;
        }
        printf("%.6f readall %ld files %lld bytes\n", now() - start, files, bytes);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "seq") == 0) {
        double start = now();
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) {
            perror(argv[2]);
            return 1;
        }
        long long bytes = drain(fd);
        close(fd);
        printf("%.6f seq %lld bytes\n", now() - start, bytes);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "rand") == 0) {
        int fd = open(argv[2], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            perror(argv[2]);
            return 1;
        }
        long count = atol(argv[3]);
        uint64_t state = (uint64_t)atoll(argv[4]) * 6364136223846793005ULL + 1;
        uint64_t pages = (uint64_t)st.st_size / 4096;
        double start = now();
        for (long i = 0; i < count; i++) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            off_t offset = (off_t)((state >> 33) % pages) * 4096;
            if (pread(fd, block, 4096, offset) != 4096) {
                perror("pread");
                return 1;
            }
        }
        printf("%.6f rand %ld reads\n", now() - start, count);
        return 0;
    }
    fprintf(stderr, "usage: guestload walk DIR | readall DIR LIST | seq FILE | rand FILE N SEED\n");
    return 2;
}
