/* Fuzzes the checkpoint container reader (exec/runtime/checkpoint.c:
 * header, section index, end record, CRCs, section reads), pprun's check
 * of the run record in it (pprun_read_checkpoint, tools/pprun_checkpoint.c:
 * model shape, schedule hash, data order and seed, optimizer, update and
 * tokens, one state blob per stage) and the cuts pprun plans from the
 * update it resumes after (pprun_plan_cuts). The input is
 * DIR/checkpoint.ckpt, read twice: as it is, and with every CRC it has room
 * for made right, so that mutations reach what lies behind the CRC checks.
 * The wanted run is the one the seed corpus comes from: 1f1b-flush, P=2,
 * m=2, 4 steps, --layers 2 --dim 4 --heads 1 --seq-len 4 on
 * tinyshakespeare's first 3000 bytes (vocabulary 52), --micro-batch-size
 * 2, --seed 7, AdamW. The stage states themselves are checked by the
 * runtime on resume (runtime_ckpt.c), which needs a model:
 * tests/test_ckpt_hostile.c covers them.
 *
 * A finding is a crash or sanitizer report, a leak, an allocation beyond
 * what the file holds, a refusal without a message, or a reader that
 * opens a file and then disagrees with its own index (a section it listed
 * but cannot read, a shape it read but does not match). */
#include "fuzz_support.h"
#include "pprun.h"
#include "registry.h"

enum { P = 2, HEADER_BYTES = 44 };

static char dir[4096], file[4200];
static ckpt_ctx want;

static void cleanup(void)
{
    unlink(file);
    rmdir(dir);
}

/* DIR/checkpoint.ckpt is a link to the memfd of fuzz_file: the input is
 * never written to a disk. */
static void init(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ppsched-fuzz-ckpt-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    snprintf(file, sizeof file, "%s/%s", dir, PPRUN_CKPT_NAME);
    if (symlink(fuzz_file(NULL, 0), file) != 0) {
        perror("fuzz: symlink");
        abort();
    }
    atexit(cleanup);
    static pp_schedule ir;
    static pp_sampler data;
    static pp_optim_config optim;
    pp_gen_opts o = {P, 2, 4, 0, 0};
    pp_err e;
    if (pp_generate_schedule("1f1b-flush", &o, &ir, &e) < 0)
        FUZZ_FAIL("%s", e.msg);
    pp_sampler_init(&data, NULL, 2, 7, PP_ORDER_RANDOM, 0);
    optim = pp_optim_defaults();
    want = (ckpt_ctx){.dir = dir, .shape = {2, 4, 1, 4, 52, P}, .ir = &ir,
                      .ir_hash = pprun_ir_hash(&ir), .seed = 7, .data = &data, .optim = &optim};
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Rewrites the CRCs of the header, of each section header and its data,
 * and of the end record, as far as the layout (checkpoint.h) can be
 * followed. */
static void fix_crcs(uint8_t *b, size_t n)
{
    if (n < HEADER_BYTES)
        return;
    put_u32(b + HEADER_BYTES - 4, pp_crc32(0, b, HEADER_BYTES - 4));
    for (size_t at = HEADER_BYTES; n - at >= 4;) {
        uint32_t len = get_u32(b + at);
        if (len == 0) {
            if (n - at >= 12)
                put_u32(b + at + 8, pp_crc32(0, b + at, 8));
            return;
        }
        if (len > PP_CKPT_NAME_MAX || n - at < 4 + (size_t)len + 16)
            return;
        uint8_t *h = b + at, *size_at = h + 4 + len;
        uint64_t bytes = get_u32(size_at) | (uint64_t)get_u32(size_at + 4) << 32;
        size_t data_at = at + 4 + len + 16;
        if (bytes <= n - data_at)
            put_u32(size_at + 8, pp_crc32(0, b + data_at, (size_t)bytes));
        put_u32(size_at + 12, pp_crc32(0, h, 16 + len));
        if (bytes > n - data_at)
            return;
        at = data_at + (size_t)bytes;
    }
}

/* The container as any reader sees it. */
static void read_container(void)
{
    pp_ckpt_reader r;
    pp_err e = {{0}};
    if (pp_ckpt_open(&r, dir, PPRUN_CKPT_NAME, &e) < 0) {
        if (!e.msg[0])
            FUZZ_FAIL("the checkpoint reader refused a file without a message");
        return;
    }
    if (pp_ckpt_check_shape(&r, &r.shape, &e) < 0)
        FUZZ_FAIL("a checkpoint does not match its own shape: %s", e.msg);
    int crcs_ok = pp_ckpt_verify(&r, &e) == 0;
    for (int i = 0; i < r.nsections; i++) {
        const pp_ckpt_section *s = &r.sections[i];
        if (pp_ckpt_find(&r, s->name) != s)
            FUZZ_FAIL("section '%s' is not found by its name", s->name);
        void *buf;
        size_t n;
        if (pp_ckpt_read_alloc(&r, s->name, &buf, &n, &e) == 0) {
            if (n != s->bytes || ((char *)buf)[n] != '\0')
                FUZZ_FAIL("section '%s' read as %zu bytes of %llu", s->name, n,
                          (unsigned long long)s->bytes);
            free(buf);
        } else if (crcs_ok) {
            FUZZ_FAIL("section '%s' verified but does not read: %s", s->name, e.msg);
        }
    }
    pp_ckpt_close(&r);
}

/* The checkpoint as pprun --resume DIR --checkpoint DIR --checkpoint-every 1
 * reads it: the run record and the stage blobs, then the cuts still ahead
 * of the update it resumes after. */
static void read_as_pprun(void)
{
    void **blobs = NULL;
    size_t *sizes = NULL;
    double tokens;
    int update;
    pp_err e = {{0}};
    if (pprun_read_checkpoint(dir, &want, &blobs, &sizes, &tokens, &update, &e) == 0) {
        pp_cli_opts o;
        pp_cli_defaults(&o, PP_TOOL_RUN);
        o.run.checkpoint = dir;
        o.run.checkpoint_every = 1;
        pp_cut *cuts;
        int ncuts, stop_cut;
        if (pprun_plan_cuts(&o, want.ir, update, &cuts, &ncuts, &stop_cut, &e) < 0 && !e.msg[0])
            FUZZ_FAIL("pprun refused to plan the cuts without a message");
        for (int j = 0; j < ncuts; j++)
            pp_cut_free(&cuts[j], P);
        free(cuts);
    } else if (!e.msg[0]) {
        FUZZ_FAIL("pprun refused a checkpoint without a message");
    }
    for (int s = 0; blobs && s < P; s++)
        free(blobs[s]);
    free(blobs);
    free(sizes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0])
        init();
    fuzz_file(data, size);
    read_container();
    read_as_pprun();
    uint8_t *fixed = malloc(size ? size : 1);
    if (!fixed)
        abort();
    memcpy(fixed, data, size);
    fix_crcs(fixed, size);
    fuzz_file(fixed, size);
    free(fixed);
    read_container();
    read_as_pprun();
    return 0;
}
