/* Fuzzes the acceptor's check of a connector's hello in the ranks'
 * handshake (pp_auth_check_hello, exec/launch/auth.c): the input is the
 * challenge this acceptor sent (32 bytes) and the 104 bytes a stranger
 * answered, checked for a rendezvous and for a link.
 *
 * A finding is a crash or sanitizer report, a verdict the checker may not
 * give, a hello without the magic taken for one, or an admitted hello whose
 * fields are not the bytes that were sent. */
#include "fuzz_support.h"
#include "launch/auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < PP_AUTH_CHALLENGE_BYTES + PP_AUTH_HELLO_BYTES)
        return 0;
    static const char key[] = "the fuzzer's job secret, 0123456789";
    pp_secret s = {{0}, sizeof key - 1};
    memcpy(s.key, key, s.len);
    const uint8_t *ch = data, *hello = data + PP_AUTH_CHALLENGE_BYTES;
    for (int purpose = PP_HELLO_STORE; purpose <= PP_HELLO_LINK; purpose++) {
        pp_hello h;
        memset(&h, 0xa5, sizeof h);
        int v = pp_auth_check_hello(&s, (pp_hello_purpose)purpose, ch, hello, &h);
        if (v != -1 && v != PP_AUTH_ADMIT && v != PP_AUTH_VERSION && v != PP_AUTH_BAD_MAC)
            FUZZ_FAIL("verdict %d", v);
        if (memcmp(hello, "ppsched", 8) != 0 && v != -1)
            FUZZ_FAIL("a hello without the magic got verdict %d", v);
        if (v == PP_AUTH_ADMIT &&
            (memcmp(&h.id, hello + 16, 4) || memcmp(&h.world, hello + 20, 4) ||
             memcmp(h.digest, hello + 24, PP_DIGEST_BYTES)))
            FUZZ_FAIL("an admitted hello's fields differ from its bytes");
    }
    return 0;
}
