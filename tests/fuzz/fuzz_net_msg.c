/* Fuzzes the length-prefixed message reader of the rendezvous store
 * (pp_net_read_msg, exec/launch/net.c: an 8-byte length, then that many
 * bytes): the input is what a peer sent, written into a socketpair whose
 * sending end is then closed, and read back message by message (at most
 * MAX bytes each) until the reader stops.
 *
 * A finding is a crash or sanitizer report, a leak, an allocation beyond
 * MAX, a reader that hangs (the deadline is 5 s), one that stops without
 * a message, or one whose messages differ from the framing of the bytes
 * sent: each message must be exactly the next length's bytes, and the
 * reader must stop exactly where the input no longer holds a whole message
 * or announces more than MAX. */
#include <sys/socket.h>

#include "fuzz_support.h"
#include "launch/net.h"

enum { MAX = 1024 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16) /* more would not fit the socket's buffer before the reads */
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("fuzz: socketpair");
        abort();
    }
    pp_err e = {{0}};
    double deadline = pp_net_now() + 5;
    if (pp_net_write_all(sv[1], data, size, deadline, &e) < 0)
        FUZZ_FAIL("writing the input: %s", e.msg);
    close(sv[1]);
    size_t at = 0;
    for (;;) {
        void *buf;
        size_t n;
        uint64_t len = 0;
        int whole = size - at >= sizeof len;
        if (whole) {
            memcpy(&len, data + at, sizeof len);
            whole = len <= MAX && len <= size - at - sizeof len;
        }
        if (pp_net_read_msg(sv[0], &buf, &n, MAX, deadline, &e) < 0) {
            if (whole)
                FUZZ_FAIL("a whole message of %llu bytes at offset %zu was refused: %s",
                          (unsigned long long)len, at, e.msg);
            if (!e.msg[0] || buf)
                FUZZ_FAIL("the reader stopped without a message or left a buffer");
            break;
        }
        if (!whole)
            FUZZ_FAIL("the reader returned a message at offset %zu where there is none", at);
        if (n != len || memcmp(buf, data + at + sizeof len, n) != 0)
            FUZZ_FAIL("the message at offset %zu differs from the bytes sent", at);
        free(buf);
        at += sizeof len + n;
    }
    close(sv[0]);
    return 0;
}
