/* The handshake of auth.h: the job secret, the connector's side, and the
 * acceptor's loop that runs several handshakes side by side on
 * non-blocking sockets. HMAC-SHA256 and the constant-time compare come
 * from OpenSSL's libcrypto. */
#define _GNU_SOURCE
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "net.h"

#define VERSION 1u
static const char magic[8] = "ppsched";
#define NONCE 16
#define MAC 32
#define CHALLENGE_BYTES (8 + 4 + 4 + NONCE)
_Static_assert(CHALLENGE_BYTES == PP_AUTH_CHALLENGE_BYTES, "challenge size");
#define HELLO_SIGNED (8 + 4 + 4 + 4 + 4 + PP_DIGEST_BYTES + NONCE)
#define HELLO_BYTES (HELLO_SIGNED + MAC)
_Static_assert(HELLO_BYTES == PP_AUTH_HELLO_BYTES, "hello size");
#define REPLY_SIGNED 8
#define REPLY_BYTES (REPLY_SIGNED + MAC)
#define MAX_PENDING 16 /* unfinished handshakes at once; the oldest goes first */

int pp_secret_load(pp_secret *s, const char *file, pp_err *e)
{
    memset(s, 0, sizeof *s);
    const char *text = getenv("PPSCHED_JOB_SECRET");
    const char *what = "PPSCHED_JOB_SECRET";
    if (text && *text) {
        s->len = strlen(text);
        if (s->len > PP_SECRET_MAX)
            return pp_errf(e, "%s: longer than %d bytes", what, PP_SECRET_MAX);
        memcpy(s->key, text, s->len);
    } else {
        if (!file)
            file = getenv("PPSCHED_JOB_SECRET_FILE");
        if (!file || !*file)
            return 0;
        what = file;
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) < 0) {
            int err = errno;
            if (fd >= 0)
                close(fd);
            return pp_errf(e, "job secret %s: %s", file, strerror(err));
        }
        if (sb.st_mode & 077) {
            close(fd);
            return pp_errf(e, "job secret %s: other users may read it (chmod 600 %s)", file,
                           file);
        }
        ssize_t n = read(fd, s->key, sizeof s->key);
        char extra;
        int more = n == (ssize_t)sizeof s->key && read(fd, &extra, 1) == 1;
        close(fd);
        if (n < 0 || more)
            return pp_errf(e, "job secret %s: %s", file,
                           more ? "longer than 256 bytes" : strerror(errno));
        s->len = (size_t)n;
        while (s->len && (s->key[s->len - 1] == '\n' || s->key[s->len - 1] == '\r'))
            s->len--;
    }
    if (s->len < PP_SECRET_MIN)
        return pp_errf(e, "job secret %s: %zu bytes, at least %d needed (e.g. openssl rand "
                          "-hex 16)", what, s->len, PP_SECRET_MIN);
    return 0;
}

static int random_bytes(void *buf, size_t n, pp_err *e)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t k = getrandom(p, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return pp_errf(e, "getrandom: %s", strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int pp_secret_generate(pp_secret *s, pp_err *e)
{
    s->len = 32;
    return random_bytes(s->key, s->len, e);
}

double pp_auth_handshake_s(double timeout_s)
{
    return timeout_s < 5 ? timeout_s : 5;
}

/* HMAC-SHA256(secret, label | a | b | c) */
static void mac_of(const pp_secret *s, const char *label, const unsigned char *a, size_t na,
                   const unsigned char *b, size_t nb, const unsigned char *c, size_t nc,
                   unsigned char out[MAC])
{
    unsigned char msg[32 + CHALLENGE_BYTES + HELLO_BYTES + REPLY_SIGNED];
    size_t nl = strlen(label), n = 0;
    memcpy(msg + n, label, nl);
    n += nl;
    memcpy(msg + n, a, na);
    n += na;
    memcpy(msg + n, b, nb);
    n += nb;
    if (nc) /* c may be NULL */
        memcpy(msg + n, c, nc);
    n += nc;
    unsigned int len = MAC;
    HMAC(EVP_sha256(), s->key, (int)s->len, msg, n, out, &len);
}

static void put32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static const char *verdict_text(uint32_t v)
{
    switch (v) {
    case PP_AUTH_BAD_MAC:
        return "the job secrets differ (PPSCHED_JOB_SECRET must be the same on every rank)";
    case PP_AUTH_NOT_WANTED:
        return "it does not wait for this rank (another world size, or two processes with "
               "the same rank?)";
    case PP_AUTH_OTHER_JOB:
        return "it runs another job (the ranks' settings differ)";
    case PP_AUTH_VERSION:
        return "it runs another version of ppsched";
    default:
        return "it gave no reason";
    }
}

int pp_auth_connect(int fd, const pp_secret *s, pp_hello_purpose purpose, const pp_hello *mine,
                    double deadline, int *refused, pp_err *e)
{
    *refused = 0;
    unsigned char ch[CHALLENGE_BYTES], h[HELLO_BYTES], r[REPLY_BYTES], want[MAC];
    if (pp_net_read_all(fd, ch, sizeof ch, deadline, e) < 0)
        return pp_err_prefix(e, "handshake");
    if (memcmp(ch, magic, 8) != 0)
        return pp_errf(e, "handshake: the other end is not a ppsched process");
    if (get32(ch + 8) != VERSION) {
        *refused = 1;
        return pp_errf(e, "handshake: the other end speaks handshake version %u, this pprun %u: "
                          "run the same ppsched on every rank", get32(ch + 8), VERSION);
    }
    if (get32(ch + 12) != (uint32_t)purpose)
        return pp_errf(e, "handshake: the other end expects another kind of connection");
    memcpy(h, magic, 8);
    put32(h + 8, VERSION);
    put32(h + 12, purpose);
    put32(h + 16, (uint32_t)mine->id);
    put32(h + 20, (uint32_t)mine->world);
    memcpy(h + 24, mine->digest, PP_DIGEST_BYTES);
    if (random_bytes(h + 24 + PP_DIGEST_BYTES, NONCE, e) < 0)
        return -1;
    mac_of(s, "ppsched hello", ch, sizeof ch, h, HELLO_SIGNED, NULL, 0, h + HELLO_SIGNED);
    if (pp_net_write_all(fd, h, sizeof h, deadline, e) < 0 ||
        pp_net_read_all(fd, r, sizeof r, deadline, e) < 0)
        return pp_err_prefix(e, "handshake");
    uint32_t verdict = get32(r);
    if (verdict != PP_AUTH_ADMIT) {
        *refused = verdict == PP_AUTH_BAD_MAC || verdict == PP_AUTH_OTHER_JOB ||
                   verdict == PP_AUTH_VERSION || verdict == PP_AUTH_NOT_WANTED;
        return pp_errf(e, "refused by the other end: %s", verdict_text(verdict));
    }
    mac_of(s, "ppsched verdict", ch, sizeof ch, h, sizeof h, r, REPLY_SIGNED, want);
    if (CRYPTO_memcmp(want, r + REPLY_SIGNED, MAC) != 0) {
        *refused = 1;
        return pp_errf(e, "handshake: the other end does not hold this job's secret");
    }
    return 0;
}

/* One handshake in progress on the acceptor's side. */
typedef struct {
    int fd;
    double until;
    unsigned char ch[CHALLENGE_BYTES];
    unsigned char h[HELLO_BYTES];
    size_t got;
} pending;

/* silent: it said nothing in time (counted apart from the rest) */
static void drop(pending *p, pp_auth_stats *st, int silent, const char *why)
{
    close(p->fd);
    p->fd = -1;
    if (silent) {
        st->silent++;
    } else {
        st->dropped++;
        snprintf(st->last, sizeof st->last, "%s", why);
    }
}

static void reply(pending *p, const pp_secret *s, uint32_t verdict, double deadline)
{
    unsigned char r[REPLY_BYTES];
    memset(r, 0, sizeof r);
    put32(r, verdict);
    if (verdict != PP_AUTH_BAD_MAC && verdict != PP_AUTH_VERSION)
        mac_of(s, "ppsched verdict", p->ch, sizeof p->ch, p->h, sizeof p->h, r, REPLY_SIGNED,
               r + REPLY_SIGNED);
    pp_err ignored;
    pp_net_write_all(p->fd, r, sizeof r, deadline, &ignored);
}

int pp_auth_check_hello(const pp_secret *s, pp_hello_purpose purpose,
                        const unsigned char *challenge, const unsigned char *hello, pp_hello *h)
{
    if (memcmp(hello, magic, 8) != 0 || get32(hello + 12) != (uint32_t)purpose)
        return -1;
    if (get32(hello + 8) != VERSION)
        return PP_AUTH_VERSION;
    unsigned char want[MAC];
    mac_of(s, "ppsched hello", challenge, CHALLENGE_BYTES, hello, HELLO_SIGNED, NULL, 0, want);
    if (CRYPTO_memcmp(want, hello + HELLO_SIGNED, MAC) != 0)
        return PP_AUTH_BAD_MAC;
    h->id = (int32_t)get32(hello + 16);
    h->world = (int32_t)get32(hello + 20);
    memcpy(h->digest, hello + 24, PP_DIGEST_BYTES);
    return PP_AUTH_ADMIT;
}

/* A complete hello: checks it, asks admit, answers. 1 when admitted. */
static int judge(pending *p, const pp_secret *s, pp_hello_purpose purpose, pp_auth_admit_fn admit,
                 void *ctx, pp_auth_stats *st)
{
    pp_hello hello;
    int v = pp_auth_check_hello(s, purpose, p->ch, p->h, &hello);
    if (v < 0) {
        drop(p, st, 0, "sent something that is not a hello");
        return 0;
    }
    if (v != PP_AUTH_ADMIT) {
        reply(p, s, (uint32_t)v, p->until);
        drop(p, st, 0, v == PP_AUTH_VERSION ? "another version of ppsched" : "a wrong job secret");
        return 0;
    }
    v = admit(ctx, &hello, -1);
    reply(p, s, (uint32_t)v, p->until);
    if (v != PP_AUTH_ADMIT) {
        close(p->fd);
        p->fd = -1;
        st->refused++;
        snprintf(st->last, sizeof st->last, "%d of %d: %s", hello.id, hello.world,
                 v == PP_AUTH_OTHER_JOB ? "another job" : "not expected");
        return 0;
    }
    int fl = fcntl(p->fd, F_GETFL);
    fcntl(p->fd, F_SETFL, fl & ~O_NONBLOCK);
    pp_net_nodelay(p->fd);
    admit(ctx, &hello, p->fd);
    p->fd = -1;
    st->admitted++;
    return 1;
}

/* A new connection: its challenge goes out at once. */
static int start(pending *pend, int *npend, int fd, double handshake_s, pp_auth_stats *st,
                 pp_hello_purpose purpose, pp_err *e)
{
    if (*npend == MAX_PENDING) { /* the oldest has had the longest */
        drop(&pend[0], st, 0, "too many unfinished handshakes at once");
        memmove(pend, pend + 1, (size_t)(MAX_PENDING - 1) * sizeof *pend);
        (*npend)--;
    }
    pending *p = &pend[(*npend)++];
    memset(p, 0, sizeof *p);
    p->fd = fd;
    p->until = pp_net_now() + handshake_s;
    memcpy(p->ch, magic, 8);
    put32(p->ch + 8, VERSION);
    put32(p->ch + 12, purpose);
    if (random_bytes(p->ch + 16, NONCE, e) < 0)
        return -1;
    if (send(fd, p->ch, sizeof p->ch, MSG_NOSIGNAL) != (ssize_t)sizeof p->ch)
        drop(p, st, 0, "closed the connection at once");
    return 0;
}

void pp_auth_stats_note(const pp_auth_stats *st, char *buf, size_t n)
{
    buf[0] = 0;
    int k = st->dropped + st->refused;
    if (k)
        snprintf(buf, n, "; %d connection%s dropped (%s%s)", k, k == 1 ? "" : "s",
                 k == 1 ? "" : "the last: ", st->last);
    if (st->silent) {
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, "; %d silent connection%s dropped", st->silent,
                 st->silent == 1 ? "" : "s");
    }
}

int pp_auth_accept(int lfd, const pp_secret *s, pp_hello_purpose purpose, int want,
                   double deadline, double handshake_s, pp_auth_admit_fn admit, void *ctx,
                   pp_auth_stats *st, pp_err *e)
{
    pending pend[MAX_PENDING];
    int npend = 0, rc = 0;
    int got = 0;
    while (rc == 0 && got < want) {
        double now = pp_net_now(), wake = deadline;
        if (deadline >= 0 && now >= deadline) {
            rc = pp_errf(e, "timed out");
            break;
        }
        struct pollfd pf[MAX_PENDING + 1];
        pf[0] = (struct pollfd){lfd, POLLIN, 0};
        for (int i = 0; i < npend; i++) {
            pf[i + 1] = (struct pollfd){pend[i].fd, POLLIN, 0};
            if (wake < 0 || pend[i].until < wake)
                wake = pend[i].until;
        }
        int ms = wake < 0 ? -1 : (int)((wake - now) * 1000) + 1;
        if (poll(pf, (nfds_t)npend + 1, ms) < 0 && errno != EINTR) {
            rc = pp_errf(e, "poll: %s", strerror(errno));
            break;
        }
        now = pp_net_now();
        for (int i = 0; i < npend; i++) {
            pending *p = &pend[i];
            if (pf[i + 1].revents) {
                ssize_t k = recv(p->fd, p->h + p->got, sizeof p->h - p->got, 0);
                if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
                    drop(p, st, 0, p->got ? "closed the connection inside its hello"
                                             : "closed the connection without a word");
                else if (k > 0 && (p->got += (size_t)k) == sizeof p->h)
                    got += judge(p, s, purpose, admit, ctx, st);
            }
            if (p->fd >= 0 && now >= p->until)
                drop(p, st, 1, NULL);
        }
        int keep = 0; /* finished handshakes leave the list */
        for (int i = 0; i < npend; i++)
            if (pend[i].fd >= 0)
                pend[keep++] = pend[i];
        npend = keep;
        if (pf[0].revents & POLLIN) {
            int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0)
                rc = start(pend, &npend, fd, handshake_s, st, purpose, e);
        }
    }
    for (int i = 0; i < npend; i++)
        close(pend[i].fd);
    return rc;
}
