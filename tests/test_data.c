/* The batches a run draws (model/data.h, pp_sampler): training sequences
 * at seeded random token offsets that are a pure function of (seed,
 * micro-batch), uniform over every offset, the sequential order kept byte
 * for byte, and validation over the whole split or a fixed seeded sample. */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/data.h"

/* ------------------------------------------------------------------ */
/* Helpers.                                                            */
/* ------------------------------------------------------------------ */

enum { VAL_BASE = 1000 };

/* Data in memory whose token ids are their offsets: train token i is i,
 * validation token i is VAL_BASE + i, so a batch shows where it was cut. */
static pp_data counting(size_t n_train, size_t n_val, int T, uint16_t *buf)
{
    pp_data d;
    memset(&d, 0, sizeof d);
    snprintf(d.path, sizeof d.path, "counting");
    for (size_t i = 0; i < n_train; i++)
        buf[i] = (uint16_t)i;
    for (size_t i = 0; i < n_val; i++)
        buf[n_train + i] = (uint16_t)(VAL_BASE + i);
    d.vocab = VAL_BASE + (int)n_val;
    d.seq_len = T;
    d.train = buf;
    d.n_train = n_train;
    d.val = buf + n_train;
    d.n_val = n_val;
    return d;
}

/* The offset a counting sequence starts at, after checking that it is
 * T consecutive tokens of one split with the targets shifted by one. */
static int offset_of(const int *in, const int *tg, int T, int base)
{
    for (int t = 0; t < T; t++) {
        ck_assert_msg(in[t] == in[0] + t, "inputs are not consecutive tokens: %d then %d",
                      in[0], in[t]);
        ck_assert_msg(tg[t] == in[t] + 1, "target %d is %d, not input %d + 1", t, tg[t],
                      in[t]);
    }
    return in[0] - base;
}

/* ------------------------------------------------------------------ */
/* Training batches.                                                   */
/* ------------------------------------------------------------------ */

enum { PT = 4, PB = 3, NMB = 64 };

typedef struct {
    const pp_sampler *s;
    int descending;
    int in[NMB][PB * PT], tg[NMB][PB * PT];
} fetcher;

static void *fetch_all(void *arg)
{
    fetcher *f = arg;
    for (int k = 0; k < NMB; k++) {
        int mb = f->descending ? NMB - 1 - k : k;
        pp_sampler_batch(f->s, mb, f->in[mb], f->tg[mb]);
    }
    return NULL;
}

START_TEST(random_batch_is_a_pure_function_of_seed_and_microbatch)
{
    uint16_t buf[600];
    pp_data d = counting(500, 100, PT, buf);
    pp_sampler a, b;
    pp_sampler_init(&a, &d, PB, 7, PP_ORDER_RANDOM, 0);
    pp_sampler_init(&b, &d, PB, 7, PP_ORDER_RANDOM, 0);
    int in3[PB * PT], tg3[PB * PT], in7[PB * PT], tg7[PB * PT], x[PB * PT], y[PB * PT];
    /* micro-batch 3 before and after 7, and on another sampler after 7 */
    pp_sampler_batch(&a, 3, in3, tg3);
    pp_sampler_batch(&a, 7, in7, tg7);
    pp_sampler_batch(&b, 7, x, y);
    ck_assert_msg(!memcmp(x, in7, sizeof x) && !memcmp(y, tg7, sizeof y),
                  "micro-batch 7 differs between two samplers of the same seed");
    pp_sampler_batch(&b, 3, x, y);
    ck_assert_msg(!memcmp(x, in3, sizeof x) && !memcmp(y, tg3, sizeof y),
                  "micro-batch 3 fetched after 7 differs from micro-batch 3 fetched first");
    pp_sampler_batch(&a, 3, x, y);
    ck_assert_msg(!memcmp(x, in3, sizeof x), "micro-batch 3 fetched twice differs");
    ck_assert_msg(memcmp(in3, in7, sizeof in3), "micro-batches 3 and 7 are the same data");

    /* As in a run: two threads fetch every micro-batch, in opposite orders. */
    fetcher *up = calloc(1, sizeof *up), *down = calloc(1, sizeof *down);
    ck_assert_ptr_nonnull(up);
    ck_assert_ptr_nonnull(down);
    *up = (fetcher){&a, 0, {{0}}, {{0}}};
    *down = (fetcher){&b, 1, {{0}}, {{0}}};
    pthread_t t1, t2;
    ck_assert_int_eq(pthread_create(&t1, NULL, fetch_all, up), 0);
    ck_assert_int_eq(pthread_create(&t2, NULL, fetch_all, down), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    for (int mb = 0; mb < NMB; mb++)
        ck_assert_msg(!memcmp(up->in[mb], down->in[mb], sizeof up->in[mb]) &&
                          !memcmp(up->tg[mb], down->tg[mb], sizeof up->tg[mb]),
                      "micro-batch %d differs between ascending and descending fetches", mb);
    free(up);
    free(down);
}
END_TEST

START_TEST(random_offsets_cover_every_offset_uniformly)
{
    /* 54 training tokens, T = 4: offsets 0..49 (the last target is token 53) */
    const int T = 4, B = 5, nmb = 400, noff = 50;
    uint16_t buf[60];
    pp_data d = counting(54, 6, T, buf);
    pp_sampler s;
    pp_sampler_init(&s, &d, B, 1, PP_ORDER_RANDOM, 0);
    int count[50] = {0}, in[20], tg[20], unaligned = 0;
    for (int mb = 0; mb < nmb; mb++) {
        pp_sampler_batch(&s, mb, in, tg);
        for (int b = 0; b < B; b++) {
            int off = offset_of(in + b * T, tg + b * T, T, 0);
            ck_assert_msg(off >= 0 && off < noff, "offset %d outside [0, %d]", off, noff - 1);
            count[off]++;
            unaligned += off % T != 0;
        }
    }
    /* 2000 draws, 40 expected per offset (sd 6.2): [15, 65] is beyond 4 sd */
    for (int off = 0; off < noff; off++)
        ck_assert_msg(count[off] >= 15 && count[off] <= 65,
                      "offset %d drawn %d times in %d draws, expected about %d", off, count[off],
                      nmb * B, nmb * B / noff);
    ck_assert_msg(unaligned > nmb * B / 2, "only %d of %d offsets are not multiples of T",
                  unaligned, nmb * B);
}
END_TEST

START_TEST(seeds_give_different_batches)
{
    uint16_t buf[600];
    pp_data d = counting(500, 100, PT, buf);
    pp_sampler a, b, c;
    pp_sampler_init(&a, &d, PB, 1, PP_ORDER_RANDOM, 0);
    pp_sampler_init(&b, &d, PB, 2, PP_ORDER_RANDOM, 0);
    pp_sampler_init(&c, &d, PB, 1, PP_ORDER_RANDOM, 0);
    ck_assert_msg(a.seed != 1 && a.seed != b.seed, "the data seed is not derived from the run's");
    ck_assert_uint_eq(a.seed, c.seed);
    int same = 0, x[PB * PT], y[PB * PT], t[PB * PT];
    for (int mb = 0; mb < 20; mb++) {
        pp_sampler_batch(&a, mb, x, t);
        pp_sampler_batch(&b, mb, y, t);
        same += !memcmp(x, y, sizeof x);
    }
    ck_assert_msg(same == 0, "seeds 1 and 2 drew %d identical micro-batches of 20", same);
}
END_TEST

START_TEST(sequential_order_is_the_loader_byte_for_byte)
{
    /* 13 sequences of 4: micro-batches of 3 wrap around past the last one */
    uint16_t buf[60];
    pp_data d = counting(54, 6, 4, buf);
    pp_sampler s;
    pp_sampler_init(&s, &d, 3, 99, PP_ORDER_SEQUENTIAL, 0);
    pp_loader l;
    pp_loader_init(&l, &d, 3);
    int in[12], tg[12], lin[12], ltg[12];
    for (int mb = 40; mb >= 0; mb--) {
        pp_sampler_batch(&s, mb, in, tg);
        pp_loader_peek(&l, mb, lin, ltg);
        ck_assert_msg(!memcmp(in, lin, sizeof in) && !memcmp(tg, ltg, sizeof tg),
                      "micro-batch %d differs from pp_loader_peek", mb);
    }
}
END_TEST

START_TEST(data_order_names)
{
    pp_data_order o;
    ck_assert_int_eq(pp_data_order_parse("random", &o), 0);
    ck_assert_int_eq(o, PP_ORDER_RANDOM);
    ck_assert_str_eq(pp_data_order_name(o), "random");
    ck_assert_int_eq(pp_data_order_parse("sequential", &o), 0);
    ck_assert_int_eq(o, PP_ORDER_SEQUENTIAL);
    ck_assert_str_eq(pp_data_order_name(o), "sequential");
    ck_assert_int_eq(pp_data_order_parse("shuffled", &o), -1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Validation.                                                         */
/* ------------------------------------------------------------------ */

/* How often each validation sequence appears over every batch. */
static void count_val(const pp_sampler *s, int *count, int nseq)
{
    int T = s->d->seq_len, in[64], tg[64];
    for (long i = 0; i < pp_sampler_val_batches(s); i++) {
        pp_sampler_val_batch(s, i, in, tg);
        for (int b = 0; b < s->B; b++) {
            int off = offset_of(in + b * T, tg + b * T, T, VAL_BASE);
            ck_assert_msg(off % T == 0 && off / T < nseq,
                          "validation offset %d is not one of the %d sequences", off, nseq);
            count[off / T]++;
        }
    }
}

START_TEST(whole_split_validation_covers_every_sequence)
{
    /* 29 validation tokens, T = 4: 7 sequences; batches of 3 -> 3 batches,
     * the last one completed with sequences 0 and 1 */
    uint16_t buf[90];
    pp_data d = counting(60, 29, 4, buf);
    pp_sampler s;
    pp_sampler_init(&s, &d, 3, 1, PP_ORDER_RANDOM, 0);
    ck_assert_int_eq(pp_sampler_val_batches(&s), 3);
    int count[7] = {0};
    count_val(&s, count, 7);
    for (int k = 0; k < 7; k++)
        ck_assert_msg(count[k] == (k < 2 ? 2 : 1), "sequence %d counted %d times", k, count[k]);
    /* batches of 7: one batch, every sequence once */
    pp_sampler_init(&s, &d, 7, 1, PP_ORDER_RANDOM, 0);
    ck_assert_int_eq(pp_sampler_val_batches(&s), 1);
    int once[7] = {0};
    count_val(&s, once, 7);
    for (int k = 0; k < 7; k++)
        ck_assert_msg(once[k] == 1, "sequence %d counted %d times", k, once[k]);
}
END_TEST

START_TEST(sampled_validation_is_fixed_by_the_seed)
{
    uint16_t buf[901];
    pp_data d = counting(500, 401, 4, buf); /* 100 validation sequences */
    pp_sampler a, b, c, seq;
    pp_sampler_init(&a, &d, 3, 5, PP_ORDER_RANDOM, 6);
    pp_sampler_init(&b, &d, 3, 5, PP_ORDER_RANDOM, 6);
    pp_sampler_init(&c, &d, 3, 6, PP_ORDER_RANDOM, 6);
    pp_sampler_init(&seq, &d, 3, 5, PP_ORDER_SEQUENTIAL, 6);
    ck_assert_int_eq(pp_sampler_val_batches(&a), 6);
    int count[100] = {0};
    count_val(&a, count, 100); /* aligned sequences of the split */
    int x[12], y[12], t[12], differ = 0;
    for (long i = 5; i >= 0; i--) {
        pp_sampler_val_batch(&a, i, x, t);
        pp_sampler_val_batch(&b, i, y, t);
        ck_assert_msg(!memcmp(x, y, sizeof x), "validation batch %ld differs, same seed", i);
        pp_sampler_val_batch(&seq, i, y, t);
        ck_assert_msg(!memcmp(x, y, sizeof x),
                      "validation batch %ld depends on the training order", i);
        pp_sampler_val_batch(&c, i, y, t);
        differ += memcmp(x, y, sizeof x) != 0;
    }
    ck_assert_msg(differ == 6, "seeds 5 and 6 share %d of 6 validation batches", 6 - differ);
}
END_TEST

static Suite *data_suite(void)
{
    Suite *s = suite_create("data");
    TCase *train = tcase_create("train");
    tcase_add_test(train, random_batch_is_a_pure_function_of_seed_and_microbatch);
    tcase_add_test(train, random_offsets_cover_every_offset_uniformly);
    tcase_add_test(train, seeds_give_different_batches);
    tcase_add_test(train, sequential_order_is_the_loader_byte_for_byte);
    tcase_add_test(train, data_order_names);
    suite_add_tcase(s, train);
    TCase *val = tcase_create("validation");
    tcase_add_test(val, whole_split_validation_covers_every_sequence);
    tcase_add_test(val, sampled_validation_is_fixed_by_the_seed);
    suite_add_tcase(s, val);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(data_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
