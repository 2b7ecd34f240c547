/* Fuzzes the import of torch.distributed.pipelining compute-only CSV
 * schedules (common/ir_pytorch_csv.c), then does with what loads what
 * ppsim does: validate, simulate, write as IR JSON and read back
 * (fuzz_check_schedule).
 *
 * A finding is a crash or sanitizer report in the reader, the validation,
 * the simulator or the writer; a leak; an allocation far beyond what the
 * input justifies (libFuzzer's -malloc_limit_mb); a schedule that
 * validates but deadlocks in the simulator; or one whose IR JSON does not
 * read back as itself. */
#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_schedule_reader(data, size, pp_schedule_parse_pytorch_csv);
}
