/* bare_read.c: the bare cost of nsnet's kernel work, with no parsing at all.
 *
 *   cc -O2 -pthread -o bare_read bare_read.c && ./bare_read [PROC [THREADS [tables|diag]]]
 *
 * PROC defaults to /proc; THREADS (default 1) threads share the per-namespace reads, the way
 * nsnet's reader threads do, so that nsnet can be compared with the same parallelism.
 *
 * 1. for every pid in PROC: readlink every PROC/<pid>/fd/<n> and stat PROC/<pid>/ns/net;
 * 2. for one pid of every distinct network namespace:
 *    tables (the floor under nsnet's `proc` source): read PROC/<pid>/net/{tcp,tcp6,udp,udp6,
 *      raw,raw6,unix} to EOF with 256 KiB reads;
 *    diag (the floor under `netlink`, i.e. `auto` as root): enter the namespace (setns, which
 *      moves only the calling thread), make a NETLINK_SOCK_DIAG socket there, go back, and
 *      dump TCP of both families in one request (TCPDIAG_GETSOCK, as nsnet does), UDP of each
 *      family and unix sockets, every state, each read to NLMSG_DONE with 256 KiB reads.
 *      nsnet asks a few things more per namespace (the netlink sockets' dump,
 *      /proc/net/protocols, the addresses), which this leaves out.
 * Prints one JSON line: elapsed seconds (total and per phase) and what it saw. The only work
 * beyond the syscalls is counting newlines (memchr) or netlink messages.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

struct reader {
    const char *proc; size_t first, step; int home;
    long long bytes, lines, files, failed, messages, dumps;
};

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

/* one dump request on sock, read to NLMSG_DONE; -1 on error */
static long dump(int sock, void *req, size_t len, char *buf, long long *bytes)
{
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    struct iovec iov = {req, len};
    struct msghdr msg = {.msg_name = &kernel, .msg_namelen = sizeof(kernel),
                         .msg_iov = &iov, .msg_iovlen = 1};
    if (sendmsg(sock, &msg, 0) < 0) return -1;
    long count = 0;
    for (;;) {
        ssize_t n = recv(sock, buf, BUFSZ, 0);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        if (n == 0) return count;
        *bytes += n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE) return count;
            if (h->nlmsg_type == NLMSG_ERROR) return -1;
            count++;
        }
    }
}

static void *read_namespaces(void *arg)
{
    struct reader *r = arg;
    char path[4096];
    char *buf = malloc(BUFSZ);
    if (!buf) { perror("malloc"); exit(2); }
    for (size_t i = r->first; i < tab_cap; i += r->step) {
        if (!tab[i].ino) continue;
        snprintf(path, sizeof(path), "%s/%ld/ns/net", r->proc, tab[i].pid);
        int nsfd = open(path, O_RDONLY | O_CLOEXEC);
        if (nsfd < 0) { r->failed++; continue; }
        int sock = -1;
        if (setns(nsfd, CLONE_NEWNET) == 0) {
            sock = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
            if (setns(r->home, CLONE_NEWNET) != 0) { perror("setns home"); exit(2); }
        }
        close(nsfd);
        if (sock < 0) { r->failed++; continue; }
        /* TCP over both families in one walk of the TCP hashes, as nsnet asks it: the legacy
         * TCPDIAG_GETSOCK request, which the kernel runs with family AF_UNSPEC */
        struct { struct nlmsghdr nlh; struct inet_diag_req req; } tcp = {
            .nlh = {.nlmsg_len = sizeof(tcp), .nlmsg_type = TCPDIAG_GETSOCK,
                    .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
            .req = {.idiag_family = AF_INET, .idiag_states = ~0u}};
        long n = dump(sock, &tcp, sizeof(tcp), buf, &r->bytes);
        if (n < 0) r->failed++; else { r->messages += n; r->dumps++; }
        struct { struct nlmsghdr nlh; struct inet_diag_req_v2 req; } udp = {
            .nlh = {.nlmsg_len = sizeof(udp), .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                    .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
            .req = {.sdiag_protocol = IPPROTO_UDP, .idiag_states = ~0u}};
        int families[] = {AF_INET, AF_INET6};
        for (int f = 0; f < 2; f++) {
            udp.req.sdiag_family = families[f];
            n = dump(sock, &udp, sizeof(udp), buf, &r->bytes);
            if (n < 0) r->failed++; else { r->messages += n; r->dumps++; }
        }
        struct { struct nlmsghdr nlh; struct unix_diag_req req; } unix_req = {
            .nlh = {.nlmsg_len = sizeof(unix_req), .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                    .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
            .req = {.sdiag_family = AF_UNIX, .udiag_states = ~0u,
                    .udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER}};
        n = dump(sock, &unix_req, sizeof(unix_req), buf, &r->bytes);
        if (n < 0) r->failed++; else { r->messages += n; r->dumps++; }
        close(sock);
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

    int diag = argc > 3 && strcmp(argv[3], "diag") == 0;
    void *(*reader)(void *) = diag ? read_namespaces : read_tables;
    long long messages = 0, dumps = 0;
    struct reader readers[256];
    pthread_t tids[256];
    for (long t = 0; t < nthreads; t++) {
        int home = -1;
        if (diag && (home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) {
            perror("open own netns");
            return 2;
        }
        readers[t] = (struct reader){proc, (size_t)t, (size_t)nthreads, home, 0, 0, 0, 0, 0, 0};
        if (nthreads > 1) pthread_create(&tids[t], NULL, reader, &readers[t]);
    }
    if (nthreads == 1) reader(&readers[0]);
    for (long t = 0; t < nthreads; t++) {
        if (nthreads > 1) pthread_join(tids[t], NULL);
        net_bytes += readers[t].bytes;
        net_lines += readers[t].lines;
        net_files += readers[t].files;
        net_failed += readers[t].failed;
        messages += readers[t].messages;
        dumps += readers[t].dumps;
        if (readers[t].home >= 0) close(readers[t].home);
    }
    double t2 = now();
    if (diag)
        printf("{\"elapsed\": %.6f, \"fd_walk\": %.6f, \"diag\": %.6f, \"pids\": %ld, "
               "\"fds\": %ld, \"socket_fds\": %ld, \"namespaces\": %zu, \"dumps\": %lld, "
               "\"failed\": %lld, \"sockets\": %lld, \"bytes\": %lld, \"ns_denied\": %ld, "
               "\"fd_denied\": %ld, \"threads\": %ld, \"impl\": \"c\"}\n",
               t2 - t0, t1 - t0, t2 - t1, pids, fds, socket_fds, tab_len, dumps, net_failed,
               messages, net_bytes, ns_denied, fd_denied, nthreads);
    else
        printf("{\"elapsed\": %.6f, \"fd_walk\": %.6f, \"net_read\": %.6f, \"pids\": %ld, \"fds\": %ld, "
               "\"socket_fds\": %ld, \"namespaces\": %zu, \"net_files\": %lld, \"net_failed\": %lld, "
               "\"net_bytes\": %lld, \"net_lines\": %lld, \"ns_denied\": %ld, \"fd_denied\": %ld, "
               "\"threads\": %ld, \"impl\": \"c\"}\n",
               t2 - t0, t1 - t0, t2 - t1, pids, fds, socket_fds, tab_len, net_files, net_failed,
               net_bytes, net_lines, ns_denied, fd_denied, nthreads);
    return 0;
}
