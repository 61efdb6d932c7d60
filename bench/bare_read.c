/* bare_read.c: the bare cost of nsnet's kernel work, with no parsing at all.
 *
 *   cc -O2 -pthread -o bare_read bare_read.c && ./bare_read [PROC [THREADS]]
 *
 * PROC defaults to /proc; THREADS (default 1) threads share the table reads, the way nsnet's
 * reader threads do, so that nsnet can be compared with the same parallelism.
 *
 * 1. for every pid in PROC: readlink every PROC/<pid>/fd/<n> and stat PROC/<pid>/ns/net;
 * 2. for one pid of every distinct network namespace: read PROC/<pid>/net/{tcp,tcp6,udp,udp6,
 *    raw,raw6,unix} to EOF with 256 KiB reads.
 * Prints one JSON line: elapsed seconds (total and per phase) and what it saw. The only work
 * beyond the syscalls is counting newlines (memchr), which is what makes "sockets" countable.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ (256 * 1024)

static const char *NET_FILES[] = {"tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"};
#define N_NET_FILES (sizeof(NET_FILES) / sizeof(NET_FILES[0]))

struct ns { uint64_t ino; long pid; };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* open-addressing set of namespace inodes -> first pid seen */
static struct ns *tab;
static size_t tab_cap, tab_len;

static void ns_add(uint64_t ino, long pid)
{
    if ((tab_len + 1) * 2 > tab_cap) {
        size_t old_cap = tab_cap;
        struct ns *old = tab;
        tab_cap = tab_cap ? tab_cap * 2 : 1024;
        tab = calloc(tab_cap, sizeof(*tab));
        if (!tab) { perror("calloc"); exit(2); }
        tab_len = 0;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].ino) ns_add(old[i].ino, old[i].pid);
        free(old);
    }
    size_t h = (size_t)(ino * 0x9E3779B97F4A7C15ull) & (tab_cap - 1);
    while (tab[h].ino) {
        if (tab[h].ino == ino) return;
        h = (h + 1) & (tab_cap - 1);
    }
    tab[h].ino = ino;
    tab[h].pid = pid;
    tab_len++;
}

struct reader { const char *proc; size_t first, step; long long bytes, lines, files, failed; };

/* reads the tables of every step-th namespace slot, starting at first */
static void *read_tables(void *arg)
{
    struct reader *r = arg;
    char path[4096];
    char *buf = malloc(BUFSZ);
    if (!buf) { perror("malloc"); exit(2); }
    for (size_t i = r->first; i < tab_cap; i += r->step) {
        if (!tab[i].ino) continue;
        for (size_t f = 0; f < N_NET_FILES; f++) {
            snprintf(path, sizeof(path), "%s/%ld/net/%s", r->proc, tab[i].pid, NET_FILES[f]);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) { r->failed++; continue; }
            r->files++;
            ssize_t n;
            while ((n = read(fd, buf, BUFSZ)) > 0) {
                r->bytes += n;
                for (char *p = buf, *e = buf + n; (p = memchr(p, '\n', e - p)); p++)
                    r->lines++;
            }
            close(fd);
        }
    }
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *proc = argc > 1 ? argv[1] : "/proc";
    long nthreads = argc > 2 ? strtol(argv[2], NULL, 10) : 1;
    if (nthreads < 1 || nthreads > 256) nthreads = 1;
    char path[4096], link[4096];
    char *buf = malloc(BUFSZ);
    long pids = 0, fds = 0, socket_fds = 0, ns_denied = 0, fd_denied = 0;
    long long net_bytes = 0, net_lines = 0, net_files = 0, net_failed = 0;
    if (!buf) { perror("malloc"); return 2; }

    double t0 = now();
    DIR *pd = opendir(proc);
    if (!pd) { fprintf(stderr, "bare_read: %s: %s\n", proc, strerror(errno)); return 2; }
    struct dirent *de;
    while ((de = readdir(pd))) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9') continue;
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end) continue;
        pids++;
        snprintf(path, sizeof(path), "%s/%ld/fd", proc, pid);
        DIR *fdd = opendir(path);
        if (fdd) {
            int dfd = dirfd(fdd);
            struct dirent *fe;
            while ((fe = readdir(fdd))) {
                if (fe->d_name[0] == '.') continue;
                ssize_t n = readlinkat(dfd, fe->d_name, link, sizeof(link) - 1);
                if (n < 0) continue;
                fds++;
                if (n > 8 && memcmp(link, "socket:[", 8) == 0) socket_fds++;
            }
            closedir(fdd);
        } else {
            fd_denied++;
        }
        struct stat st;
        snprintf(path, sizeof(path), "%s/%ld/ns/net", proc, pid);
        if (stat(path, &st) == 0)
            ns_add((uint64_t)st.st_ino, pid);
        else
            ns_denied++;
    }
    closedir(pd);
    double t1 = now();

    struct reader readers[256];
    pthread_t tids[256];
    for (long t = 0; t < nthreads; t++) {
        readers[t] = (struct reader){proc, (size_t)t, (size_t)nthreads, 0, 0, 0, 0};
        if (nthreads > 1) pthread_create(&tids[t], NULL, read_tables, &readers[t]);
    }
    if (nthreads == 1) read_tables(&readers[0]);
    for (long t = 0; t < nthreads; t++) {
        if (nthreads > 1) pthread_join(tids[t], NULL);
        net_bytes += readers[t].bytes;
        net_lines += readers[t].lines;
        net_files += readers[t].files;
        net_failed += readers[t].failed;
    }
    double t2 = now();
    printf("{\"elapsed\": %.6f, \"fd_walk\": %.6f, \"net_read\": %.6f, \"pids\": %ld, \"fds\": %ld, "
           "\"socket_fds\": %ld, \"namespaces\": %zu, \"net_files\": %lld, \"net_failed\": %lld, "
           "\"net_bytes\": %lld, \"net_lines\": %lld, \"ns_denied\": %ld, \"fd_denied\": %ld, "
           "\"threads\": %ld, \"impl\": \"c\"}\n",
           t2 - t0, t1 - t0, t2 - t1, pids, fds, socket_fds, tab_len, net_files, net_failed,
           net_bytes, net_lines, ns_denied, fd_denied, nthreads);
    return 0;
}
