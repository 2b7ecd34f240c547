/* Fuzzes the IR JSON reader (common/ir_json.c) and, through the action
 * strings in it, the action text form ("F3", "B2@s", "F7@v1", OPT;
 * pp_action_parse in common/ir.c), then does with what loads what ppsim
 * does: validate, simulate, write back (fuzz_check_schedule).
 *
 * A finding is a crash or sanitizer report in the reader, the validation,
 * the simulator or the writer; a leak; an allocation far beyond what the
 * input justifies (libFuzzer's -malloc_limit_mb); a schedule that
 * validates but deadlocks in the simulator; or one that does not read back
 * as itself from the JSON it writes. */
#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_schedule_reader(data, size, pp_schedule_parse_json);
}
