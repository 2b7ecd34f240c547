/* What the ranks' handshake (exec/launch/auth.c) costs per connection on
 * loopback: N connections with the handshake against N plain ones.
 *   handshake_bench [N]     (default 2000)
 * A run makes 2(P-1) such connections once, at its start (the rendezvous
 * and the transport links); messages after that carry no MAC. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launch/auth.h"
#include "launch/net.h"

static int n_conn = 2000, port, with_auth;
static pp_secret secret;

static pp_auth_verdict admit(void *ctx, const pp_hello *h, int fd)
{
    (void)h;
    if (fd >= 0)
        *(int *)ctx = fd;
    return PP_AUTH_ADMIT;
}

static void *connector(void *arg)
{
    (void)arg;
    pp_err e;
    pp_hello me = {1, 2, {0}};
    for (int i = 0; i < n_conn; i++) {
        int refused, fd = pp_net_connect("127.0.0.1", port, pp_net_now() + 10, &e);
        char c;
        if (fd < 0 || (with_auth && pp_auth_connect(fd, &secret, PP_HELLO_LINK, &me,
                                                    pp_net_now() + 10, &refused, &e) < 0) ||
            pp_net_read_all(fd, &c, 1, pp_net_now() + 10, &e) < 0) {
            fprintf(stderr, "handshake_bench: %s\n", e.msg);
            exit(1);
        }
        close(fd);
    }
    return NULL;
}

/* Seconds per connection: connect, (handshake), one byte back, close. */
static double run(int auth)
{
    pp_err e;
    with_auth = auth;
    int lfd = pp_net_listen("127.0.0.1", 0, &port, &e);
    if (lfd < 0) {
        fprintf(stderr, "handshake_bench: %s\n", e.msg);
        exit(1);
    }
    pthread_t th;
    double t0 = pp_net_now();
    pthread_create(&th, NULL, connector, NULL);
    for (int i = 0; i < n_conn; i++) {
        int fd = -1;
        pp_auth_stats st = {0};
        if (auth ? pp_auth_accept(lfd, &secret, PP_HELLO_LINK, 1, pp_net_now() + 10, 5, admit,
                                  &fd, &st, &e) < 0
                 : (fd = pp_net_accept(lfd, pp_net_now() + 10, &e)) < 0) {
            fprintf(stderr, "handshake_bench: %s\n", e.msg);
            exit(1);
        }
        pp_net_write_all(fd, "k", 1, pp_net_now() + 10, &e);
        close(fd);
    }
    pthread_join(th, NULL);
    close(lfd);
    return (pp_net_now() - t0) / n_conn;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (n_conn = atoi(argv[1])) < 1) {
        fprintf(stderr, "usage: handshake_bench [CONNECTIONS]\n");
        return 2;
    }
    secret.len = 32;
    memset(secret.key, 7, secret.len);
    run(0); /* warm up */
    double plain = run(0), auth = run(1);
    printf("loopback, %d connections each\n", n_conn);
    printf("  plain connect + 1 byte      %8.1f us per connection\n", plain * 1e6);
    printf("  with the handshake          %8.1f us per connection\n", auth * 1e6);
    printf("  handshake cost              %8.1f us per connection\n", (auth - plain) * 1e6);
    return 0;
}
