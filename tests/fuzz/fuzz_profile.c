/* Fuzzes the measured-profile reader (pp_cost_load_profile, common/cost.c;
 * the file pprun --profile writes and ppsim --profile reads) for a
 * two-stage schedule; the input is the file.
 *
 * A finding is a crash or sanitizer report, a leak, a refusal without a
 * message, or a profile that loads with a duration the cost model must
 * not take (negative, not finite, above PP_MAX_DURATION), a unit that is
 * not a string, or a "stages" other than the schedule's. */
#include <cjson/cJSON.h>

#include "fuzz_support.h"

enum { STAGES = 2 };

static void check_duration(double d, const char *what)
{
    if (!(d >= 0.0 && d <= PP_MAX_DURATION))
        FUZZ_FAIL("a profile loaded with %s = %g", what, d);
}

/* A profile that loads for STAGES stages says "stages": STAGES. */
static void check_stages(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    cJSON *root = cJSON_Parse(text);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stages");
    if (!cJSON_IsNumber(st))
        FUZZ_FAIL("a profile without a number of stages loaded");
    if (st->valuedouble != STAGES)
        FUZZ_FAIL("a profile for %.17g stages loaded for %d", st->valuedouble, STAGES);
    cJSON_Delete(root);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pp_cost c;
    pp_err e = {{0}};
    if (pp_cost_init(&c, STAGES, &e) < 0)
        FUZZ_FAIL("pp_cost_init: %s", e.msg);
    if (pp_cost_load_profile(&c, fuzz_file(data, size), &e) == 0) {
        for (int s = 0; s < STAGES; s++) {
            check_duration(c.fwd[s], "fwd");
            check_duration(c.bwd[s], "bwd");
            check_duration(c.inp[s], "inp");
            check_duration(c.wgt[s], "wgt");
            check_duration(c.opt[s], "opt");
            for (int op = 0; op < PP_OP_COUNT; op++)
                check_duration(pp_cost_duration(&c, op, s, 0, 0.0), "a duration");
        }
        check_duration(c.comm_latency, "comm");
        check_stages(data, size);
        if (!memchr(c.unit, '\0', sizeof c.unit))
            FUZZ_FAIL("the unit is not NUL-terminated");
    } else if (!e.msg[0]) {
        FUZZ_FAIL("the profile reader refused an input without a message");
    }
    pp_cost_free(&c);
    return 0;
}
