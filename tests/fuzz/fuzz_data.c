/* Fuzzes the training-data readers (exec/model/data.c): the input is read
 * as a text file and as an llm.c token shard (alone, and as its own
 * validation shard), and every load that succeeds is then sampled as a run
 * samples it: random and sequential training batches, every validation
 * batch (and a seeded sample of them), the sequential loader and its saved
 * positions. The sequence length varies with the input's size (1..16).
 *
 * A finding is a crash or sanitizer report (a batch read past its split),
 * a leak, a refusal without a message, or a batch holding a token outside
 * the vocabulary. */
#include "fuzz_support.h"
#include "model/data.h"

enum { B = 2, MAX_T = 16, VOCAB_BIN = 50257 };

static void check_batch(const pp_data *d, const int *inputs, const int *targets)
{
    for (int i = 0; i < B * d->seq_len; i++)
        if (inputs[i] < 0 || inputs[i] >= d->vocab || targets[i] < 0 || targets[i] >= d->vocab)
            FUZZ_FAIL("a batch holds token %d / %d, vocabulary %d", inputs[i], targets[i],
                      d->vocab);
}

static void sample(const pp_data *d)
{
    int in[B * MAX_T], tg[B * MAX_T];
    if (pp_data_train_sequences(d) < 1 || pp_data_val_sequences(d) < 1)
        FUZZ_FAIL("a split without a whole sequence loaded");
    for (int order = 0; order < 2; order++)
        for (int val_sample = 0; val_sample <= 3; val_sample += 3) {
            pp_sampler s;
            pp_sampler_init(&s, d, B, 7, order ? PP_ORDER_SEQUENTIAL : PP_ORDER_RANDOM,
                            val_sample);
            const long mbs[] = {0, 1, 2, 1L << 40};
            for (size_t i = 0; i < sizeof mbs / sizeof *mbs; i++) {
                pp_sampler_batch(&s, mbs[i], in, tg);
                check_batch(d, in, tg);
            }
            long n = pp_sampler_val_batches(&s);
            for (long i = 0; i < n; i++) {
                pp_sampler_val_batch(&s, i, in, tg);
                check_batch(d, in, tg);
            }
        }
    pp_loader l;
    pp_loader_init(&l, d, B);
    pp_err e;
    for (int i = 0; i < 3; i++) {
        pp_loader_next(&l, in, tg);
        check_batch(d, in, tg);
        size_t pos = pp_loader_pos(&l);
        if (pp_loader_set_pos(&l, pos, &e) < 0)
            FUZZ_FAIL("the loader refuses its own position: %s", e.msg);
    }
    size_t T = (size_t)d->seq_len, bad[] = {1, pp_data_train_sequences(d) * T, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if ((T > 1 || i > 0) && pp_loader_set_pos(&l, bad[i], &e) == 0)
            FUZZ_FAIL("the loader took position %zu of %zu sequences of %zu", bad[i],
                      pp_data_train_sequences(d), T);
    pp_loader_peek(&l, 5, in, tg);
    check_batch(d, in, tg);
}

static void load(int (*loaded)(pp_data *, const char *, int, pp_err *), const char *path, int T)
{
    pp_data d;
    pp_err e = {{0}};
    if (loaded(&d, path, T, &e) == 0) {
        sample(&d);
        pp_data_free(&d);
    } else if (!e.msg[0]) {
        FUZZ_FAIL("a data reader refused an input without a message");
    }
}

static int text(pp_data *d, const char *path, int T, pp_err *e)
{
    return pp_data_load_text(d, path, T, e);
}

static int shard(pp_data *d, const char *path, int T, pp_err *e)
{
    return pp_data_load_bin(d, path, NULL, VOCAB_BIN, T, e);
}

static int shard_and_val(pp_data *d, const char *path, int T, pp_err *e)
{
    return pp_data_load_bin(d, path, path, VOCAB_BIN, T, e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file(data, size);
    int T = 1 + (int)(size % MAX_T);
    load(text, path, T);
    load(shard, path, T);
    load(shard_and_val, path, T);
    return 0;
}
