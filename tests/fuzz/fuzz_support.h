/* What the libFuzzer harnesses of tests/fuzz/ share: an input as a file for
 * the loaders that only take a path, and what a loaded schedule must
 * survive. A harness calls abort() where a property fails, so libFuzzer
 * keeps the input as a crash like any sanitizer report. (The harnesses are
 * compiled with _GNU_SOURCE: memfd_create, open_memstream.) */
#ifndef PP_FUZZ_SUPPORT_H
#define PP_FUZZ_SUPPORT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine.h"
#include "ir.h"

/* Stops the run with the input kept as a crash, saying why. */
#define FUZZ_FAIL(...)                                                                          \
    do {                                                                                        \
        fprintf(stderr, "fuzz: property failed: " __VA_ARGS__);                                 \
        fputc('\n', stderr);                                                                    \
        abort();                                                                                \
    } while (0)

/* The input as a NUL-terminated string (what pp_read_file hands the text
 * parsers; a NUL inside ends the text there, as it does for them). The
 * caller frees it. */
static inline char *fuzz_text(const uint8_t *data, size_t size)
{
    char *t = malloc(size + 1);
    if (!t)
        abort();
    memcpy(t, data, size);
    t[size] = '\0';
    return t;
}

/* The input as a file: one memfd for the whole run, rewritten per input,
 * named by "/proc/self/fd/N", which fopen opens afresh at offset 0 and
 * fstat sees as a regular file of exactly `size` bytes. */
static inline const char *fuzz_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("ppsched-fuzz", 0);
        if (fd < 0) {
            perror("fuzz: memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) {
        perror("fuzz: writing the input to the memfd");
        abort();
    }
    return path;
}

/* Field by field: text fields compare as strings (a replaced parameter
 * may leave bytes after its NUL). */
static inline int fuzz_same_schedule(const pp_schedule *a, const pp_schedule *b)
{
    const pp_ir_info *x = &a->info, *y = &b->info;
    if (strcmp(x->name, y->name) || x->stages != y->stages ||
        x->microbatches_per_step != y->microbatches_per_step || x->steps != y->steps ||
        x->total_microbatches != y->total_microbatches || x->nparams != y->nparams ||
        x->ranks != y->ranks || x->placement != y->placement)
        return 0;
    for (int i = 0; i < x->nparams; i++)
        if (strcmp(x->params[i].key, y->params[i].key) ||
            strcmp(x->params[i].value, y->params[i].value))
            return 0;
    for (int s = 0; s < a->info.ranks; s++)
        if (a->rank[s].count != b->rank[s].count ||
            memcmp(a->rank[s].items, b->rank[s].items,
                   a->rank[s].count * sizeof *a->rank[s].items) != 0)
            return 0;
    return 1;
}

/* What ppsim does with a schedule it loaded, with the properties that must
 * hold: it validates or is refused with a message; a valid one simulates
 * to the end (validation's deadlock walk and the engine agree) and writes
 * back as IR JSON that reads as the same schedule. */
static inline void fuzz_check_schedule(const pp_schedule *s)
{
    pp_err e = {{0}};
    if (pp_schedule_validate(s, &e) < 0) {
        if (!e.msg[0])
            FUZZ_FAIL("validation refused a schedule without a message");
        return;
    }
    pp_cost cost;
    if (pp_cost_init(&cost, s->info.stages, &e) < 0)
        FUZZ_FAIL("pp_cost_init: %s", e.msg);
    pp_model_desc tiny, *model = NULL;
    if (pp_model_preset("tiny", &tiny, &e) == 0 && pp_model_check(&tiny, s->info.stages, &e) == 0)
        model = &tiny;
    const char *rc = pp_info_get_param(&s->info, "recompute");
    pp_sim_config cfg = {&cost, model, rc && strcmp(rc, "1") == 0, NULL, NULL, NULL};
    pp_stream *st;
    pp_metrics m;
    if (pp_stream_from_schedule(s, &st, &e) < 0)
        FUZZ_FAIL("pp_stream_from_schedule: %s", e.msg);
    if (pp_simulate(st, &cfg, &m, &e) < 0)
        FUZZ_FAIL("a validated schedule does not simulate: %s", e.msg);
    pp_metrics_free(&m);
    pp_stream_free(st);
    pp_cost_free(&cost);

    char *json = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&json, &len);
    if (!f || pp_schedule_write_json(s, f, &e) < 0 || fclose(f) != 0)
        FUZZ_FAIL("writing IR JSON to memory failed");
    pp_schedule back;
    if (pp_schedule_parse_json(json, &back, &e) < 0)
        FUZZ_FAIL("the IR JSON written does not read back: %s\n%s", e.msg, json);
    if (!fuzz_same_schedule(s, &back))
        FUZZ_FAIL("the IR JSON written reads back as another schedule:\n%s", json);
    pp_schedule_free(&back);
    free(json);
}

/* A harness for one schedule reader: parse the input as text; what loads
 * goes through fuzz_check_schedule, what does not must say why. */
static inline int fuzz_schedule_reader(const uint8_t *data, size_t size,
                                       int (*parse)(const char *, pp_schedule *, pp_err *))
{
    char *text = fuzz_text(data, size);
    pp_schedule s;
    pp_err e = {{0}};
    if (parse(text, &s, &e) == 0) {
        fuzz_check_schedule(&s);
        pp_schedule_free(&s);
    } else if (!e.msg[0]) {
        FUZZ_FAIL("a schedule reader refused an input without a message");
    }
    free(text);
    return 0;
}

#endif
