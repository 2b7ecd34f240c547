#define _GNU_SOURCE
#include "net.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

double pp_net_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Waits until fd is ready for `events`: 1 ready, 0 deadline passed. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            double left = deadline - pp_net_now();
            if (left <= 0)
                return 0;
            ms = (int)(left * 1000) + 1;
        }
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, ms);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return 1; /* let the read or write report the error */
    }
}

int pp_net_listen(const char *host, int port, int *bound, pp_err *e)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons((uint16_t)port);
    if (host && *host) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int gai = getaddrinfo(host, NULL, &hints, &res);
        if (gai != 0)
            return pp_errf(e, "cannot resolve host \"%s\": %s", host, gai_strerror(gai));
        a.sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
        freeaddrinfo(res);
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return pp_errf(e, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        int err = errno;
        close(fd);
        char where[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &a.sin_addr, where, sizeof where);
        return pp_errf(e, "cannot listen on %s port %d: %s%s", where, port, strerror(err),
                       err == EADDRNOTAVAIL ? " (not an address of this machine; --bind "
                                              "0.0.0.0 listens on every interface)"
                                            : "");
    }
    if (bound)
        *bound = ntohs(a.sin_port);
    return fd;
}

void pp_net_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int pp_net_accept(int lfd, double deadline, pp_err *e)
{
    for (;;) {
        if (!wait_fd(lfd, POLLIN, deadline))
            return pp_errf(e, "timed out waiting for a connection");
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            pp_net_nodelay(fd);
            return fd;
        }
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
            return pp_errf(e, "accept: %s", strerror(errno));
    }
}

int pp_net_connect(const char *host, int port, double deadline, pp_err *e)
{
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, ports, &hints, &res);
    if (gai != 0)
        return pp_errf(e, "cannot resolve host \"%s\": %s", host, gai_strerror(gai));
    int fd = -1, err = 0;
    for (;;) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = errno;
            break;
        }
        if (connect(fd, res->ai_addr, res->ai_addrlen) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
        /* the listener may not be up yet: retry until the deadline */
        if ((err != ECONNREFUSED && err != ETIMEDOUT && err != EHOSTUNREACH &&
             err != ENETUNREACH && err != EINTR) ||
            (deadline >= 0 && pp_net_now() >= deadline))
            break;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    freeaddrinfo(res);
    if (fd < 0)
        return pp_errf(e, "cannot connect to %s:%d: %s", host, port, strerror(err));
    pp_net_nodelay(fd);
    return fd;
}

int pp_net_write_all(int fd, const void *buf, size_t n, double deadline, pp_err *e)
{
    const char *p = buf;
    while (n > 0) {
        if (!wait_fd(fd, POLLOUT, deadline))
            return pp_errf(e, "timed out sending");
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k < 0)
            return pp_errf(e, errno == EPIPE || errno == ECONNRESET ? "peer closed the connection"
                                                                   : "send: %s",
                           strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int pp_net_read_all(int fd, void *buf, size_t n, double deadline, pp_err *e)
{
    char *p = buf;
    while (n > 0) {
        if (!wait_fd(fd, POLLIN, deadline))
            return pp_errf(e, "timed out receiving");
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            return pp_errf(e, "peer closed the connection");
        if (k < 0)
            return pp_errf(e, "recv: %s", strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int pp_net_write_msg(int fd, const void *buf, size_t n, double deadline, pp_err *e)
{
    uint64_t len = n;
    if (pp_net_write_all(fd, &len, sizeof len, deadline, e) < 0)
        return -1;
    return pp_net_write_all(fd, buf, n, deadline, e);
}

int pp_net_read_msg(int fd, void **buf, size_t *n, size_t max, double deadline, pp_err *e)
{
    uint64_t len;
    *buf = NULL;
    if (pp_net_read_all(fd, &len, sizeof len, deadline, e) < 0)
        return -1;
    if (len > max)
        return pp_errf(e, "message of %llu bytes, at most %zu expected", (unsigned long long)len,
                       max);
    void *b = malloc(len ? len : 1);
    if (!b)
        return pp_errf(e, "out of memory");
    if (pp_net_read_all(fd, b, len, deadline, e) < 0) {
        free(b);
        return -1;
    }
    *buf = b;
    *n = len;
    return 0;
}
