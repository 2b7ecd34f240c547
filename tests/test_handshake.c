/* Who may join a run (exec/launch/auth.c, job.c) and what a receiver
 * accepts (exec/transport/mailbox.c), on loopback: strangers of every kind
 * (connect-and-close, silence, junk, a huge length prefix, a wrong secret,
 * a flood of connections) are dropped while the honest connection gets
 * in; ranks launched differently stop with one line naming the
 * difference; a peer's flood of unwanted messages is bounded and does not
 * hold a receive past its timeout. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "launch/auth.h"
#include "launch/job.h"
#include "launch/net.h"
#include "launch/store.h"
#include "test_support.h"
#include "transport/mailbox.h"

static pp_secret secret_of(const char *text)
{
    pp_secret s = {{0}, strlen(text)};
    memcpy(s.key, text, s.len);
    return s;
}

#define KEY "the test job's secret: 0123456789"

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* --- the acceptor admits exactly the wanted connector ------------------ */

typedef struct {
    int port;
    const char *key;
    int id, world;
    double delay_s;
    int rc, refused, fd;
    char msg[512];
} connector;

static void *connect_main(void *arg)
{
    connector *c = arg;
    sleep_s(c->delay_s);
    pp_err e = {{0}};
    pp_secret s = secret_of(c->key);
    pp_hello h = {c->id, c->world, {0}};
    c->fd = pp_net_connect("127.0.0.1", c->port, pp_net_now() + 10, &e);
    c->rc = c->fd < 0 ? -1
                      : pp_auth_connect(c->fd, &s, PP_HELLO_STORE, &h, pp_net_now() + 10,
                                        &c->refused, &e);
    snprintf(c->msg, sizeof c->msg, "%s", e.msg);
    return NULL;
}

typedef struct {
    int fd[4];
} admitted;

static pp_auth_verdict admit_rank(void *ctx, const pp_hello *h, int fd)
{
    admitted *a = ctx;
    if (h->world != 4 || h->id < 1 || h->id > 3 || a->fd[h->id] >= 0)
        return PP_AUTH_NOT_WANTED;
    if (fd >= 0)
        a->fd[h->id] = fd;
    return PP_AUTH_ADMIT;
}

/* A raw client: connects, writes n bytes of buf (or none), keeps the
 * socket open for hold_s, closes. */
typedef struct {
    int port;
    const void *buf;
    size_t n;
    double hold_s;
} stranger;

static void *stranger_main(void *arg)
{
    stranger *s = arg;
    pp_err e;
    int fd = pp_net_connect("127.0.0.1", s->port, pp_net_now() + 5, &e);
    if (fd < 0)
        return NULL;
    if (s->n)
        pp_net_write_all(fd, s->buf, s->n, pp_net_now() + 5, &e);
    sleep_s(s->hold_s);
    close(fd);
    return NULL;
}

static int listener(int *port)
{
    pp_err e;
    int lfd = pp_net_listen("127.0.0.1", 0, port, &e);
    ck_assert_msg(lfd >= 0, "%s", e.msg);
    return lfd;
}

START_TEST(strangers_are_dropped_and_the_rank_gets_in)
{
    int port, lfd = listener(&port);
    static unsigned char junk[300], huge[8];
    memset(junk, 'x', sizeof junk);
    memset(huge, 0xff, sizeof huge); /* a 16 EiB length prefix */
    stranger st[] = {
        {port, NULL, 0, 0},          /* a port scanner: connect and close */
        {port, NULL, 0, 3},          /* silent */
        {port, junk, sizeof junk, 1}, /* junk */
        {port, huge, sizeof huge, 3}, /* a huge length prefix, then nothing */
    };
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, stranger_main, &st[i]);
    connector wrong = {port, "another job's secret 0123456789", 2, 4, 0.3, 0, 0, -1, ""};
    connector dup = {port, KEY, 2, 4, 0.6, 0, 0, -1, ""}; /* rank 2 again */
    connector honest = {port, KEY, 2, 4, 0.4, 0, 0, -1, ""};
    connector other = {port, KEY, 3, 4, 0.5, 0, 0, -1, ""};
    pthread_t tw, td, th1, th2;
    pthread_create(&tw, NULL, connect_main, &wrong);
    pthread_create(&th1, NULL, connect_main, &honest);
    pthread_create(&th2, NULL, connect_main, &other);
    pthread_create(&td, NULL, connect_main, &dup);
    admitted a = {{-1, -1, -1, -1}};
    pp_auth_stats stats = {0};
    pp_secret s = secret_of(KEY);
    pp_err e = {{0}};
    double t0 = pp_net_now();
    /* wants ranks 2 and 3 (and 1, which never comes: the loop ends when
     * dup has been judged, see below) */
    int rc = pp_auth_accept(lfd, &s, PP_HELLO_STORE, 2, t0 + 10, 2.0, admit_rank, &a, &stats,
                            &e);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_double_lt(pp_net_now() - t0, 2.0); /* no stranger held it up */
    ck_assert_int_ge(a.fd[2], 0);
    ck_assert_int_ge(a.fd[3], 0);
    /* the duplicate rank 2 arrives after both were admitted: the next
     * acceptor call (a later world) refuses it */
    pp_auth_stats more = {0};
    rc = pp_auth_accept(lfd, &s, PP_HELLO_STORE, 1, pp_net_now() + 1.5, 1.0, admit_rank, &a,
                        &more, &e);
    ck_assert_int_lt(rc, 0);
    ck_assert_str_eq(e.msg, "timed out");
    ck_assert_int_eq(more.refused, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    pthread_join(tw, NULL);
    pthread_join(th1, NULL);
    pthread_join(th2, NULL);
    pthread_join(td, NULL);
    ck_assert_msg(honest.rc == 0 && other.rc == 0, "%s / %s", honest.msg, other.msg);
    ck_assert_int_lt(wrong.rc, 0);
    ck_assert_int_eq(wrong.refused, 1);
    ck_assert_msg(strstr(wrong.msg, "job secrets differ"), "%s", wrong.msg);
    ck_assert_int_lt(dup.rc, 0);
    ck_assert_msg(strstr(dup.msg, "same rank"), "%s", dup.msg);
    /* scanner, junk and the wrong secret were dropped in the first call;
     * the silent one and the huge prefix may still have been waiting */
    ck_assert_int_ge(stats.dropped + more.dropped, 3);
    /* the admitted connections work */
    char c = 'k', got = 0;
    ck_assert_int_eq(pp_net_write_all(a.fd[2], &c, 1, pp_net_now() + 2, &e), 0);
    ck_assert_int_eq(pp_net_read_all(honest.fd, &got, 1, pp_net_now() + 2, &e), 0);
    ck_assert_int_eq(got, 'k');
    close(a.fd[2]);
    close(a.fd[3]);
    close(honest.fd);
    close(other.fd);
    close(lfd);
}
END_TEST

START_TEST(a_silent_connection_is_dropped_after_the_handshake_deadline)
{
    int port, lfd = listener(&port);
    stranger quiet = {port, NULL, 0, 4};
    pthread_t tq, th;
    pthread_create(&tq, NULL, stranger_main, &quiet);
    connector honest = {port, KEY, 1, 4, 1.5, 0, 0, -1, ""};
    pthread_create(&th, NULL, connect_main, &honest);
    admitted a = {{-1, -1, -1, -1}};
    pp_auth_stats stats = {0};
    pp_secret s = secret_of(KEY);
    pp_err e;
    int rc = pp_auth_accept(lfd, &s, PP_HELLO_STORE, 1, pp_net_now() + 10, 0.5, admit_rank, &a,
                            &stats, &e);
    pthread_join(th, NULL);
    pthread_join(tq, NULL);
    ck_assert_msg(rc == 0 && honest.rc == 0, "%s / %s", e.msg, honest.msg);
    ck_assert_int_eq(stats.silent, 1);
    char note[256];
    pp_auth_stats_note(&stats, note, sizeof note);
    ck_assert_str_eq(note, "; 1 silent connection dropped");
    close(a.fd[1]);
    close(honest.fd);
    close(lfd);
}
END_TEST

/* More silent connections than handshakes run at once: the oldest go
 * first, so the late honest rank still gets in long before their
 * deadlines. */
START_TEST(a_flood_of_connections_does_not_lock_out_the_rank)
{
    int port, lfd = listener(&port);
    enum { N = 40 };
    stranger quiet[N];
    pthread_t tq[N], th;
    for (int i = 0; i < N; i++) {
        quiet[i] = (stranger){port, NULL, 0, 3};
        pthread_create(&tq[i], NULL, stranger_main, &quiet[i]);
    }
    connector honest = {port, KEY, 1, 4, 0.5, 0, 0, -1, ""};
    pthread_create(&th, NULL, connect_main, &honest);
    admitted a = {{-1, -1, -1, -1}};
    pp_auth_stats stats = {0};
    pp_secret s = secret_of(KEY);
    pp_err e;
    double t0 = pp_net_now();
    int rc = pp_auth_accept(lfd, &s, PP_HELLO_STORE, 1, t0 + 10, 2.5, admit_rank, &a, &stats, &e);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_double_lt(pp_net_now() - t0, 2.0);
    ck_assert_int_ge(stats.dropped, N - 16);
    ck_assert_str_eq(stats.last, "too many unfinished handshakes at once");
    pthread_join(th, NULL);
    for (int i = 0; i < N; i++)
        pthread_join(tq[i], NULL);
    close(a.fd[1]);
    close(honest.fd);
    close(lfd);
}
END_TEST

/* --- the job agreement over a real store, one process per rank -------- */

static double job_timeout_s = 10;

static int rank_with_job(const char *spec, int rank, int mbs, const char *sched, char *msg)
{
    pp_job j;
    pp_job_init(&j);
    pp_job_text(&j, "schedule", sched);
    pp_job_number(&j, "micro-batch size", mbs);
    pp_store_opts o = {job_timeout_s, secret_of(KEY), NULL, &j};
    pp_store *st;
    pp_err e = {{0}};
    int refused = 0;
    if (pp_store_open(spec, rank, 3, &o, &st, &refused, &e) == 0) {
        pp_store_close(st);
        return 0;
    }
    snprintf(msg, 512, "%s", e.msg);
    return refused ? 2 : 1;
}

/* Runs 3 ranks (rank 2 with mbs2/sched2); every rank's exit code and the
 * message of rank 0 and rank 2 (identical when they disagree). */
static void run_job(const char *spec, int mbs2, const char *sched2, int *codes, char *msg)
{
    int fds[3][2];
    pid_t pid[3];
    for (int r = 0; r < 3; r++) {
        ck_assert_int_eq(pipe(fds[r]), 0);
        pid[r] = fork();
        if (pid[r] == 0) {
            char m[512] = "";
            int rc = rank_with_job(spec, r, r == 2 ? mbs2 : 8, r == 2 ? sched2 : "paci", m);
            ssize_t w = write(fds[r][1], m, strlen(m) + 1);
            (void)w;
            _exit(rc);
        }
        close(fds[r][1]);
    }
    for (int r = 0; r < 3; r++) {
        int status;
        waitpid(pid[r], &status, 0);
        codes[r] = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        char m[512] = "";
        ssize_t k = read(fds[r][0], m, sizeof m - 1);
        m[k > 0 ? k : 0] = 0;
        if (r == 0)
            snprintf(msg, 512, "%s", m);
        else if (codes[r] == 2)
            ck_assert_str_eq(m, msg); /* every rank says the same */
        close(fds[r][0]);
    }
}

static int free_port(void)
{
    int port, fd = listener(&port);
    close(fd);
    return port;
}

START_TEST(ranks_that_disagree_all_stop_naming_the_difference)
{
    char spec[64], msg[512];
    int codes[3];
    snprintf(spec, sizeof spec, "tcp://127.0.0.1:%d", free_port());
    run_job(spec, 8, "paci", codes, msg);
    ck_assert_msg(codes[0] == 0 && codes[1] == 0 && codes[2] == 0, "%d %d %d: %s", codes[0],
                  codes[1], codes[2], msg);
    snprintf(spec, sizeof spec, "tcp://127.0.0.1:%d", free_port());
    run_job(spec, 4, "paci", codes, msg);
    ck_assert_msg(codes[0] == 2 && codes[1] == 2 && codes[2] == 2, "%d %d %d", codes[0],
                  codes[1], codes[2]);
    ck_assert_str_eq(msg, "the ranks disagree: rank 2 has micro-batch size 4, rank 0 has 8");
    char dir[] = "/tmp/ppsched-job-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(spec, sizeof spec, "file:%s", dir);
    run_job(spec, 8, "gpipe", codes, msg);
    ck_assert_msg(codes[0] == 2 && codes[1] == 2 && codes[2] == 2, "%d %d %d", codes[0],
                  codes[1], codes[2]);
    ck_assert_str_eq(msg, "the ranks disagree: rank 2 has schedule gpipe, rank 0 has paci");
    rmdir(dir);
}
END_TEST

START_TEST(a_tcp_rendezvous_without_a_secret_is_refused)
{
    pp_store_opts o = {1, {{0}, 0}, NULL, NULL};
    pp_store *st;
    pp_err e;
    int refused = 0;
    ck_assert_int_lt(pp_store_open("tcp://127.0.0.1:1", 1, 2, &o, &st, &refused, &e), 0);
    ck_assert_int_eq(refused, 1);
    ck_assert_msg(strstr(e.msg, "no job secret"), "%s", e.msg);
}
END_TEST

/* --- where rank 0 listens ---------------------------------------------- */

/* An IPv4 address of this machine other than loopback, or 0. */
static int other_address(char *buf, size_t n)
{
    struct ifaddrs *ifs, *i;
    int found = 0;
    if (getifaddrs(&ifs) < 0)
        return 0;
    for (i = ifs; i && !found; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && !(i->ifa_flags & IFF_LOOPBACK) &&
            (i->ifa_flags & IFF_UP))
            found = inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf,
                              (socklen_t)n) != NULL;
    freeifaddrs(ifs);
    return found;
}

START_TEST(rank_0_listens_only_on_the_rendezvous_address)
{
    char other[64];
    if (!other_address(other, sizeof other)) {
        printf("skipped: no network address besides loopback\n");
        return;
    }
    int port = free_port();
    char spec[64];
    snprintf(spec, sizeof spec, "tcp://127.0.0.1:%d", port);
    pid_t pid = fork();
    job_timeout_s = 1.5;
    if (pid == 0) { /* rank 0 waits 1.5 s for ranks that never come */
        char msg[512];
        _exit(rank_with_job(spec, 0, 8, "paci", msg) == 1 ? 0 : 3);
    }
    sleep_s(0.5);
    pp_err e;
    int fd = pp_net_connect(other, port, pp_net_now() + 0.3, &e);
    ck_assert_msg(fd < 0, "rank 0 took a connection at %s:%d", other, port);
    ck_assert_msg(strstr(e.msg, "refused"), "%s", e.msg);
    fd = pp_net_connect("127.0.0.1", port, pp_net_now() + 1, &e);
    ck_assert_msg(fd >= 0, "%s", e.msg);
    close(fd);
    int status;
    waitpid(pid, &status, 0);
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    /* --bind 0.0.0.0 takes every interface */
    int any_port, lfd = -1;
    lfd = pp_net_listen("0.0.0.0", 0, &any_port, &e);
    ck_assert_int_ge(lfd, 0);
    fd = pp_net_connect(other, any_port, pp_net_now() + 1, &e);
    ck_assert_msg(fd >= 0, "%s", e.msg);
    close(fd);
    close(lfd);
}
END_TEST

/* --- the secret's sources ------------------------------------------------ */

START_TEST(the_secret_comes_from_the_environment_or_a_private_file)
{
    pp_secret s;
    pp_err e;
    unsetenv("PPSCHED_JOB_SECRET");
    unsetenv("PPSCHED_JOB_SECRET_FILE");
    ck_assert_int_eq(pp_secret_load(&s, NULL, &e), 0);
    ck_assert_int_eq(s.len, 0);
    setenv("PPSCHED_JOB_SECRET", "short", 1);
    ck_assert_int_lt(pp_secret_load(&s, NULL, &e), 0);
    ck_assert_msg(strstr(e.msg, "at least 16"), "%s", e.msg);
    setenv("PPSCHED_JOB_SECRET", KEY, 1);
    ck_assert_int_eq(pp_secret_load(&s, "/nonexistent", &e), 0); /* the variable wins */
    ck_assert_int_eq(s.len, strlen(KEY));
    unsetenv("PPSCHED_JOB_SECRET");
    char path[] = "/tmp/ppsched-secret-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, KEY "\n", strlen(KEY) + 1), (ssize_t)strlen(KEY) + 1);
    close(fd);
    ck_assert_int_eq(chmod(path, 0644), 0);
    ck_assert_int_lt(pp_secret_load(&s, path, &e), 0);
    ck_assert_msg(strstr(e.msg, "other users may read it"), "%s", e.msg);
    ck_assert_int_eq(chmod(path, 0600), 0);
    ck_assert_int_eq(pp_secret_load(&s, path, &e), 0);
    ck_assert_int_eq(s.len, strlen(KEY)); /* without the newline */
    ck_assert_int_eq(memcmp(s.key, KEY, s.len), 0);
    unlink(path);
    ck_assert_int_lt(pp_secret_load(&s, path, &e), 0);
    ck_assert_msg(strstr(e.msg, "No such file"), "%s", e.msg);
}
END_TEST

/* --- the receiver's mailbox ---------------------------------------------- */

static void keep(void *ctx, void *buf) /* the test's messages are static */
{
    (void)ctx;
    (void)buf;
}

START_TEST(unwanted_messages_are_bounded)
{
    pp_mailbox m;
    pp_err e;
    static int payload[64];
    ck_assert_int_eq(pp_mailbox_init(&m, 4, &e), 0);
    /* micro-batches 1..3 ahead of 0: parked; 0 arrives and is taken */
    for (int mb = 1; mb <= 3; mb++)
        ck_assert_int_eq(pp_queue_push(&m.q, mb, &payload[mb]), PP_QUEUE_OK);
    ck_assert_int_eq(pp_queue_push(&m.q, 0, &payload[0]), PP_QUEUE_OK);
    void *got;
    ck_assert_int_eq(pp_mailbox_take(&m, 0, 1, &got), PP_QUEUE_OK);
    ck_assert_ptr_eq(got, &payload[0]);
    /* micro-batch 2 again while the first is parked: refused */
    ck_assert_int_eq(pp_queue_push(&m.q, 2, &payload[9]), PP_QUEUE_OK);
    ck_assert_int_eq(pp_mailbox_take(&m, 7, 1, &got), PP_MAILBOX_UNWANTED);
    ck_assert_int_eq(m.unwanted_mb, 2);
    ck_assert_ptr_eq(got, &payload[9]);
    /* more parked than the capacity: refused */
    for (int mb = 10; mb < 12; mb++)
        ck_assert_int_eq(pp_queue_push(&m.q, mb, &payload[mb]), PP_QUEUE_OK);
    ck_assert_int_eq(pp_mailbox_take(&m, 7, 1, &got), PP_MAILBOX_UNWANTED);
    ck_assert_int_eq(m.unwanted_mb, 11);
    pp_mailbox_free(&m, keep, NULL);
}
END_TEST

typedef struct {
    pp_mailbox *m;
    int stop;
} trickle;

/* Sends a message the receiver does not want, then keeps the link busy
 * with nothing, every 0.1 s for 3 s. */
static void *trickle_main(void *arg)
{
    trickle *t = arg;
    static int x;
    for (int i = 0; i < 30 && !t->stop; i++) {
        if (i < 3)
            pp_queue_push(&t->m->q, 100 + i, &x);
        sleep_s(0.1);
    }
    return NULL;
}

START_TEST(other_messages_do_not_restart_the_wait)
{
    pp_mailbox m;
    pp_err e;
    ck_assert_int_eq(pp_mailbox_init(&m, 8, &e), 0);
    trickle t = {&m, 0};
    pthread_t th;
    pthread_create(&th, NULL, trickle_main, &t);
    void *got;
    double t0 = pp_net_now();
    ck_assert_int_eq(pp_mailbox_take(&m, 5, 0.25, &got), PP_QUEUE_TIMEOUT);
    ck_assert_double_lt(pp_net_now() - t0, 0.4);
    t.stop = 1;
    pthread_join(th, NULL);
    pp_mailbox_free(&m, keep, NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("handshake");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, strangers_are_dropped_and_the_rank_gets_in);
    tcase_add_test(tc, a_silent_connection_is_dropped_after_the_handshake_deadline);
    tcase_add_test(tc, a_flood_of_connections_does_not_lock_out_the_rank);
    tcase_add_test(tc, ranks_that_disagree_all_stop_naming_the_difference);
    tcase_add_test(tc, a_tcp_rendezvous_without_a_secret_is_refused);
    tcase_add_test(tc, rank_0_listens_only_on_the_rendezvous_address);
    tcase_add_test(tc, the_secret_comes_from_the_environment_or_a_private_file);
    tcase_add_test(tc, unwanted_messages_are_bounded);
    tcase_add_test(tc, other_messages_do_not_restart_the_wait);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
