/* The executor's I/O: training data (text and token shards, splits,
 * batches, positions, every load error), checkpoints (round trip, shape
 * check, corruption, interrupted writes) and the inter-stage queue. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, nanosleep, fork */
#include <check.h>
#include <dirent.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/checkpoint.h"
#include "model/data.h"
#include "transport/queue.h"

/* ------------------------------------------------------------------ */
/* Helpers.                                                            */
/* ------------------------------------------------------------------ */

static char tmpdir[256];
static char pathbuf[512];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ppsched_exec_io.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* The temp directories are flat: remove the files, then the directory. */
static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *de;
    char p[1024];
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
        remove(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    return n;
}

static const char *tmp(const char *name)
{
    snprintf(pathbuf, sizeof pathbuf, "%s/%s", tmpdir, name);
    return pathbuf;
}

static void write_file(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void put_le32(unsigned char *p, int32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)((uint32_t)v >> (8 * i));
}

/* An llm.c shard with the given header; writes `written` of the tokens. */
static void write_shard(const char *path, int32_t magic, int32_t version, int32_t count,
                        const uint16_t *tok, size_t written)
{
    size_t n = 1024 + 2 * written;
    unsigned char *b = calloc(1, n);
    ck_assert_ptr_nonnull(b);
    put_le32(b, magic);
    put_le32(b + 4, version);
    put_le32(b + 8, count);
    for (size_t i = 0; i < written; i++) {
        b[1024 + 2 * i] = (unsigned char)(tok[i] & 0xFF);
        b[1024 + 2 * i + 1] = (unsigned char)(tok[i] >> 8);
    }
    write_file(path, b, n);
    free(b);
}

/* Expects -1 and a message naming `file` and containing `fragment`. */
#define ck_fails_with(call, e, file, fragment)                                      \
    do {                                                                             \
        ck_assert_int_eq((call), -1);                                                \
        ck_assert_msg(strstr((e).msg, (fragment)), "message '%s' lacks '%s'",       \
                      (e).msg, (fragment));                                          \
        ck_assert_msg(strstr((e).msg, (file)), "message '%s' does not name %s",     \
                      (e).msg, (file));                                              \
    } while (0)

/* ------------------------------------------------------------------ */
/* Text data.                                                          */
/* ------------------------------------------------------------------ */

START_TEST(text_vocab_and_split)
{
    make_tmpdir();
    const char *text = "the quick brown fox jumps over the lazy dog"; /* 43 bytes */
    size_t n = strlen(text);
    write_file(tmp("pangram.txt"), text, n);
    pp_data d;
    pp_err e;
    ck_assert_msg(pp_data_load_text(&d, tmp("pangram.txt"), 4, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(d.vocab, 27); /* space and a-z */
    ck_assert_int_eq(d.symbols[0], ' ');
    for (int i = 1; i < 27; i++)
        ck_assert_int_eq(d.symbols[i], 'a' + i - 1);
    ck_assert_uint_eq(d.n_train, 38); /* floor(43 * 0.9) */
    ck_assert_uint_eq(d.n_val, 5);
    for (size_t i = 0; i < d.n_train; i++)
        ck_assert_int_eq(d.symbols[d.train[i]], text[i]);
    for (size_t i = 0; i < d.n_val; i++)
        ck_assert_int_eq(d.symbols[d.val[i]], text[d.n_train + i]);
    ck_assert_int_eq(d.train[0], 't' - 'a' + 1);
    pp_data_free(&d);
    remove_tmpdir();
}
END_TEST

/* Byte i of this text is '0' + i, so token ids equal offsets. */
static void load_counting(pp_data *d, int T)
{
    unsigned char text[60];
    for (int i = 0; i < 60; i++)
        text[i] = (unsigned char)('0' + i);
    write_file(tmp("count.txt"), text, sizeof text);
    pp_err e;
    ck_assert_msg(pp_data_load_text(d, tmp("count.txt"), T, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(d->vocab, 60);
    ck_assert_uint_eq(d->n_train, 54);
    ck_assert_uint_eq(d->n_val, 6);
}

static void check_sequence(const int *in, const int *tg, int T, int first_token)
{
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(in[t], first_token + t);
        ck_assert_int_eq(tg[t], first_token + t + 1);
    }
}

START_TEST(batches_and_wrap_around)
{
    make_tmpdir();
    pp_data d;
    const int T = 4, B = 3;
    load_counting(&d, T);
    ck_assert_uint_eq(pp_data_train_sequences(&d), 13); /* (54 - 1) / 4 */
    pp_loader l;
    pp_loader_init(&l, &d, B);
    int in[12], tg[12];
    for (int batch = 0; batch < 4; batch++) {
        pp_loader_next(&l, in, tg);
        for (int b = 0; b < B; b++)
            check_sequence(in + b * T, tg + b * T, T, (batch * B + b) * T);
    }
    ck_assert_uint_eq(pp_loader_pos(&l), 48);
    /* Sequence 12 is the last whole one (tokens 48..52); then back to 0. */
    pp_loader_next(&l, in, tg);
    check_sequence(in, tg, T, 48);
    check_sequence(in + T, tg + T, T, 0);
    check_sequence(in + 2 * T, tg + 2 * T, T, 4);
    ck_assert_uint_eq(pp_loader_pos(&l), 8);

    /* Validation: one whole sequence (tokens 54..58), every batch alike. */
    ck_assert_uint_eq(pp_data_val_sequences(&d), 1);
    int vin[12], vtg[12], vin2[12], vtg2[12];
    pp_data_val_batch(&d, B, 0, vin, vtg);
    pp_data_val_batch(&d, B, 7, vin2, vtg2);
    for (int b = 0; b < B; b++)
        check_sequence(vin + b * T, vtg + b * T, T, 54);
    ck_assert_mem_eq(vin, vin2, sizeof vin);
    ck_assert_mem_eq(vtg, vtg2, sizeof vtg);
    pp_data_free(&d);
    remove_tmpdir();
}
END_TEST

START_TEST(position_save_restore)
{
    make_tmpdir();
    pp_data d;
    const int T = 4, B = 3;
    load_counting(&d, T);
    pp_loader a, b;
    pp_loader_init(&a, &d, B);
    int in[12], tg[12], in2[12], tg2[12];
    for (int i = 0; i < 7; i++)
        pp_loader_next(&a, in, tg);
    size_t pos = pp_loader_pos(&a);

    /* Peeking k ahead is what the k-th next call returns. */
    int pin[12], ptg[12];
    pp_loader_peek(&a, 3, pin, ptg);

    pp_err e;
    pp_loader_init(&b, &d, B);
    ck_assert_msg(pp_loader_set_pos(&b, pos, &e) == 0, "%s", e.msg);
    for (int i = 0; i < 4; i++) {
        pp_loader_next(&a, in, tg);
        pp_loader_next(&b, in2, tg2);
        ck_assert_mem_eq(in, in2, sizeof in);
        ck_assert_mem_eq(tg, tg2, sizeof tg);
    }
    ck_assert_mem_eq(pin, in, sizeof in);
    ck_assert_mem_eq(ptg, tg, sizeof tg);

    /* Skipping equals calling next. */
    pp_loader_set_pos(&b, pos, &e);
    pp_loader_skip(&b, 4);
    ck_assert_uint_eq(pp_loader_pos(&b), pp_loader_pos(&a));

    ck_fails_with(pp_loader_set_pos(&b, 6, &e), e, "count.txt", "not the start of a sequence");
    ck_fails_with(pp_loader_set_pos(&b, 52, &e), e, "count.txt", "not the start of a sequence");
    pp_data_free(&d);
    remove_tmpdir();
}
END_TEST

static void load_tinyshakespeare(pp_data *d, int T)
{
    const char *src = getenv("PPSCHED_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/data/tinyshakespeare.txt", src ? src : ".");
    pp_err e;
    ck_assert_msg(pp_data_load_text(d, path, T, &e) == 0, "%s", e.msg);
}

START_TEST(tinyshakespeare)
{
    pp_data d;
    load_tinyshakespeare(&d, 64);
    ck_assert_int_eq(d.vocab, 65);
    ck_assert_int_eq(d.symbols[0], '\n');
    ck_assert_int_eq(d.symbols[1], ' ');
    ck_assert_uint_eq(d.n_train + d.n_val, 1115394);
    ck_assert_uint_eq(d.n_train, 1003854);
    /* "First Citizen" */
    ck_assert_int_eq(d.symbols[d.train[0]], 'F');
    ck_assert_int_eq(d.symbols[d.train[6]], 'C');
    pp_data_free(&d);
}
END_TEST

/* Whether tokens p[0..64] are the inputs x[0..63], then the last target. */
static int is_sequence_at(const uint16_t *p, const int *x, const int *y)
{
    for (int t = 0; t < 64; t++)
        if (p[t] != x[t] || p[t + 1] != y[t])
            return 0;
    return 1;
}

/* nanoGPT's CPU run: micro-batches of 12 sequences of 64 characters. */
START_TEST(tinyshakespeare_batches)
{
    pp_data d;
    load_tinyshakespeare(&d, 64);
    pp_sampler s;
    pp_sampler_init(&s, &d, 12, 1, PP_ORDER_RANDOM, 0);
    ck_assert_uint_eq(pp_data_val_sequences(&d), 1742);
    ck_assert_int_eq(pp_sampler_val_batches(&s), 146); /* ceil(1742 / 12) */
    /* every sampled sequence is the text at some offset of the training
     * split, and most such offsets are not multiples of T */
    static int in[12 * 64], tg[12 * 64];
    int unaligned = 0;
    for (int mb = 0; mb < 4; mb++) {
        pp_sampler_batch(&s, mb, in, tg);
        for (int b = 0; b < 12; b++) {
            const int *x = in + b * 64, *y = tg + b * 64;
            size_t off = 0;
            while (off + 64 < d.n_train && !is_sequence_at(d.train + off, x, y))
                off++;
            ck_assert_msg(off + 64 < d.n_train, "micro-batch %d sequence %d is not in the text",
                          mb, b);
            unaligned += off % 64 != 0;
        }
    }
    ck_assert_int_gt(unaligned, 24);
    pp_data_free(&d);
}
END_TEST

START_TEST(text_errors)
{
    make_tmpdir();
    pp_data d;
    pp_err e;
    write_file(tmp("empty.txt"), "", 0);
    ck_fails_with(pp_data_load_text(&d, tmp("empty.txt"), 4, &e), e, "empty.txt", "empty file");
    ck_fails_with(pp_data_load_text(&d, tmp("missing.txt"), 4, &e), e, "missing.txt",
                  "cannot open");
    /* 43 bytes: 5 validation tokens, one short of seq_len 5 + 1. */
    const char *text = "the quick brown fox jumps over the lazy dog";
    write_file(tmp("short.txt"), text, strlen(text));
    ck_fails_with(pp_data_load_text(&d, tmp("short.txt"), 5, &e), e, "short.txt",
                  "validation split has 5 tokens");
    /* 10 bytes: 9 training tokens, one short of seq_len 9 + 1. */
    write_file(tmp("tiny.txt"), "abcdefghij", 10);
    ck_fails_with(pp_data_load_text(&d, tmp("tiny.txt"), 9, &e), e, "tiny.txt",
                  "training split has 9 tokens");
    ck_fails_with(pp_data_load_text(&d, tmpdir, 4, &e), e, tmpdir, "not a regular file");
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Token shards.                                                       */
/* ------------------------------------------------------------------ */

START_TEST(bin_loads)
{
    make_tmpdir();
    uint16_t tok[100], vtok[20];
    for (int i = 0; i < 100; i++)
        tok[i] = (uint16_t)(i * 503 % 50257);
    for (int i = 0; i < 20; i++)
        vtok[i] = (uint16_t)(50256 - i);
    write_shard(tmp("train.bin"), PP_BIN_MAGIC, 1, 100, tok, 100);
    write_shard(tmp("val.bin"), PP_BIN_MAGIC, 1, 20, vtok, 20);
    pp_data d;
    pp_err e;

    ck_assert_msg(pp_data_load_bin(&d, tmp("train.bin"), NULL, 50257, 8, &e) == 0, "%s",
                  e.msg);
    ck_assert_int_eq(d.vocab, 50257);
    ck_assert_uint_eq(d.n_train, 90);
    ck_assert_uint_eq(d.n_val, 10);
    for (int i = 0; i < 90; i++)
        ck_assert_int_eq(d.train[i], tok[i]);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(d.val[i], tok[90 + i]);
    pp_loader l;
    pp_loader_init(&l, &d, 2);
    int in[16], tg[16];
    pp_loader_next(&l, in, tg);
    for (int t = 0; t < 16; t++) {
        ck_assert_int_eq(in[t], tok[t]);
        ck_assert_int_eq(tg[t], tok[t + 1]);
    }
    pp_data_free(&d);

    char train[512];
    snprintf(train, sizeof train, "%s", tmp("train.bin"));
    ck_assert_msg(pp_data_load_bin(&d, train, tmp("val.bin"), 50257, 8, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(d.n_train, 100);
    ck_assert_uint_eq(d.n_val, 20);
    ck_assert_int_eq(d.val[19], 50237);
    pp_data_free(&d);
    remove_tmpdir();
}
END_TEST

/* A shard's training split is sampled like text: random token offsets. */
START_TEST(bin_random_offsets)
{
    make_tmpdir();
    uint16_t tok[100];
    for (int i = 0; i < 100; i++)
        tok[i] = (uint16_t)(i * 503 % 50257); /* distinct: a token names its offset */
    write_shard(tmp("train.bin"), PP_BIN_MAGIC, 1, 100, tok, 100);
    pp_data d;
    pp_err e;
    ck_assert_msg(pp_data_load_bin(&d, tmp("train.bin"), NULL, 50257, 8, &e) == 0, "%s",
                  e.msg);
    pp_sampler s;
    pp_sampler_init(&s, &d, 2, 3, PP_ORDER_RANDOM, 0);
    int in[16], tg[16], unaligned = 0;
    for (int mb = 0; mb < 20; mb++) {
        pp_sampler_batch(&s, mb, in, tg);
        for (int b = 0; b < 2; b++) {
            int off = 0;
            while (off < 90 && tok[off] != in[b * 8])
                off++;
            ck_assert_msg(off <= 90 - 8 - 1, "offset %d is past the training split's end", off);
            for (int t = 0; t < 8; t++) {
                ck_assert_int_eq(in[b * 8 + t], tok[off + t]);
                ck_assert_int_eq(tg[b * 8 + t], tok[off + t + 1]);
            }
            unaligned += off % 8 != 0;
        }
    }
    ck_assert_int_gt(unaligned, 0);
    pp_data_free(&d);
    remove_tmpdir();
}
END_TEST

START_TEST(bin_errors)
{
    make_tmpdir();
    uint16_t tok[100];
    for (int i = 0; i < 100; i++)
        tok[i] = (uint16_t)i;
    pp_data d;
    pp_err e;

    write_shard(tmp("magic.bin"), 20240521, 1, 100, tok, 100);
    ck_fails_with(pp_data_load_bin(&d, tmp("magic.bin"), NULL, 256, 8, &e), e, "magic.bin",
                  "bad magic 20240521");
    write_shard(tmp("version.bin"), PP_BIN_MAGIC, 2, 100, tok, 100);
    ck_fails_with(pp_data_load_bin(&d, tmp("version.bin"), NULL, 256, 8, &e), e,
                  "version.bin", "bad version 2");
    write_shard(tmp("trunc.bin"), PP_BIN_MAGIC, 1, 100, tok, 50);
    ck_fails_with(pp_data_load_bin(&d, tmp("trunc.bin"), NULL, 256, 8, &e), e, "trunc.bin",
                  "truncated shard");
    write_file(tmp("header.bin"), "\x28\xd6\x34\x01", 4); /* the magic alone */
    ck_fails_with(pp_data_load_bin(&d, tmp("header.bin"), NULL, 256, 8, &e), e, "header.bin",
                  "truncated shard");
    write_shard(tmp("long.bin"), PP_BIN_MAGIC, 1, 40, tok, 50);
    ck_fails_with(pp_data_load_bin(&d, tmp("long.bin"), NULL, 256, 8, &e), e, "long.bin",
                  "after the 40 tokens");
    write_shard(tmp("zero.bin"), PP_BIN_MAGIC, 1, 0, tok, 0);
    ck_fails_with(pp_data_load_bin(&d, tmp("zero.bin"), NULL, 256, 8, &e), e, "zero.bin",
                  "0 tokens");

    tok[37] = 300;
    write_shard(tmp("vocab.bin"), PP_BIN_MAGIC, 1, 100, tok, 100);
    ck_fails_with(pp_data_load_bin(&d, tmp("vocab.bin"), NULL, 256, 8, &e), e, "vocab.bin",
                  "token 300 at offset 37");
    ck_assert_ptr_nonnull(strstr(e.msg, "outside the vocabulary"));
    /* A bad validation shard is named as such. */
    tok[37] = 37;
    write_shard(tmp("good.bin"), PP_BIN_MAGIC, 1, 100, tok, 100);
    char good[512];
    snprintf(good, sizeof good, "%s", tmp("good.bin"));
    ck_fails_with(pp_data_load_bin(&d, good, tmp("vocab.bin"), 256, 8, &e), e, "vocab.bin",
                  "token 300 at offset 37");

    write_file(tmp("empty.bin"), "", 0);
    ck_fails_with(pp_data_load_bin(&d, tmp("empty.bin"), NULL, 256, 8, &e), e, "empty.bin",
                  "empty file");
    ck_fails_with(pp_data_load_bin(&d, tmp("missing.bin"), NULL, 256, 8, &e), e,
                  "missing.bin", "cannot open");
    ck_fails_with(pp_data_load_bin(&d, good, tmp("missing.bin"), 256, 8, &e), e,
                  "missing.bin", "cannot open");
    /* 100 tokens: 10 for validation, fewer than seq_len 10 + 1. */
    ck_fails_with(pp_data_load_bin(&d, good, NULL, 256, 10, &e), e, "good.bin",
                  "validation split has 10 tokens");
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Checkpoints.                                                        */
/* ------------------------------------------------------------------ */

static const pp_ckpt_shape SHAPE = {2, 128, 4, 32, 65, 2};
static const char RUNTIME_JSON[] = "{\"step\": 12, \"data_pos\": 4096}";

/* A checkpoint whose weights are all `value`. */
static void write_ckpt(const char *name, float value)
{
    float w[1000], m[1000];
    for (int i = 0; i < 1000; i++) {
        w[i] = value;
        m[i] = value * 0.5f + (float)i;
    }
    pp_ckpt_writer wr;
    pp_err e;
    ck_assert_msg(pp_ckpt_writer_open(&wr, tmpdir, name, &SHAPE, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_writer_add(&wr, "stage0.weights", w, sizeof w, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_writer_add(&wr, "stage0.adam_m", m, sizeof m, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_writer_add(&wr, "empty", NULL, 0, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_writer_add(&wr, "runtime.json", RUNTIME_JSON, strlen(RUNTIME_JSON),
                                     &e) == 0,
                  "%s", e.msg);
    ck_assert_msg(pp_ckpt_writer_commit(&wr, &e) == 0, "%s", e.msg);
}

/* Reads name back and checks every section against write_ckpt(value). */
static void check_ckpt(const char *name, float value)
{
    pp_ckpt_reader r;
    pp_err e;
    ck_assert_msg(pp_ckpt_open(&r, tmpdir, name, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_check_shape(&r, &SHAPE, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_verify(&r, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(r.nsections, 4);
    float w[1000], m[1000];
    ck_assert_msg(pp_ckpt_read(&r, "stage0.weights", w, sizeof w, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_read(&r, "stage0.adam_m", m, sizeof m, &e) == 0, "%s", e.msg);
    for (int i = 0; i < 1000; i++) {
        ck_assert_float_eq(w[i], value);
        ck_assert_float_eq(m[i], value * 0.5f + (float)i);
    }
    ck_assert_msg(pp_ckpt_read(&r, "empty", NULL, 0, &e) == 0, "%s", e.msg);
    void *json;
    size_t n;
    ck_assert_msg(pp_ckpt_read_alloc(&r, "runtime.json", &json, &n, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(n, strlen(RUNTIME_JSON));
    ck_assert_str_eq(json, RUNTIME_JSON);
    free(json);
    pp_ckpt_close(&r);
}

START_TEST(crc32_known_value)
{
    ck_assert_uint_eq(pp_crc32(0, "123456789", 9), 0xCBF43926u);
    ck_assert_uint_eq(pp_crc32(pp_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
    ck_assert_uint_eq(pp_crc32(0, "", 0), 0);
}
END_TEST

START_TEST(ckpt_round_trip)
{
    make_tmpdir();
    write_ckpt("a.ckpt", 3.25f);
    check_ckpt("a.ckpt", 3.25f);
    ck_assert_int_eq(count_files(tmpdir), 1); /* no temp file left */

    pp_ckpt_reader r;
    pp_err e;
    ck_assert_msg(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e) == 0, "%s", e.msg);
    ck_assert_ptr_null(pp_ckpt_find(&r, "stage1.weights"));
    ck_assert_uint_eq(pp_ckpt_find(&r, "stage0.weights")->bytes, 4000);
    float w[10];
    ck_fails_with(pp_ckpt_read(&r, "stage1.weights", w, sizeof w, &e), e, "a.ckpt",
                  "no section 'stage1.weights'");
    ck_fails_with(pp_ckpt_read(&r, "stage0.weights", w, sizeof w, &e), e, "a.ckpt",
                  "has 4000 bytes, expected 40");
    pp_ckpt_close(&r);

    /* Overwriting replaces the old one. */
    write_ckpt("a.ckpt", -1.0f);
    check_ckpt("a.ckpt", -1.0f);

    /* The writer refuses duplicate and bad section names. */
    pp_ckpt_writer wr;
    ck_assert_int_eq(pp_ckpt_writer_open(&wr, tmpdir, "b.ckpt", &SHAPE, &e), 0);
    ck_assert_int_eq(pp_ckpt_writer_add(&wr, "x", w, sizeof w, &e), 0);
    ck_fails_with(pp_ckpt_writer_add(&wr, "x", w, sizeof w, &e), e, "b.ckpt", "twice");
    ck_assert_int_eq(pp_ckpt_writer_add(&wr, "", w, sizeof w, &e), -1);
    pp_ckpt_writer_abort(&wr);
    ck_assert_int_eq(count_files(tmpdir), 1);

    /* The writer creates a missing directory; a missing file is named. */
    char sub[512];
    snprintf(sub, sizeof sub, "%s", tmp("sub"));
    ck_assert_msg(pp_ckpt_writer_open(&wr, sub, "c.ckpt", &SHAPE, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_writer_commit(&wr, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ckpt_open(&r, sub, "c.ckpt", &e) == 0, "%s", e.msg);
    ck_assert_int_eq(r.nsections, 0);
    pp_ckpt_close(&r);
    ck_fails_with(pp_ckpt_open(&r, sub, "nope.ckpt", &e), e, "nope.ckpt", "cannot open");
    remove(tmp("sub/c.ckpt"));
    rmdir(sub);
    remove_tmpdir();
}
END_TEST

START_TEST(ckpt_shape_mismatch)
{
    make_tmpdir();
    write_ckpt("a.ckpt", 1.0f);
    pp_ckpt_reader r;
    pp_err e;
    ck_assert_msg(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e) == 0, "%s", e.msg);
    pp_ckpt_shape want = SHAPE;
    want.dim = 64;
    ck_fails_with(pp_ckpt_check_shape(&r, &want, &e), e, "a.ckpt",
                  "checkpoint is for dim 128, model has dim 64");
    want = SHAPE;
    want.stages = 4;
    ck_fails_with(pp_ckpt_check_shape(&r, &want, &e), e, "a.ckpt",
                  "checkpoint is for stages 2, model has stages 4");
    pp_ckpt_close(&r);
    remove_tmpdir();
}
END_TEST

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    unsigned char *b = malloc(*n);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

/* Marks the bytes of tmpdir/a.ckpt that lie strictly inside a section's
 * data (all but its first and last byte). */
static char *interior_of_sections(size_t n)
{
    char *skip = calloc(n, 1);
    ck_assert_ptr_nonnull(skip);
    pp_ckpt_reader r;
    pp_err e;
    ck_assert_msg(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e) == 0, "%s", e.msg);
    for (int s = 0; s < r.nsections; s++)
        for (uint64_t k = 1; k + 1 < r.sections[s].bytes; k++)
            skip[r.sections[s].offset + k] = 1;
    pp_ckpt_close(&r);
    return skip;
}

START_TEST(ckpt_corruption_detected)
{
    make_tmpdir();
    write_ckpt("a.ckpt", 2.0f);
    size_t n;
    unsigned char *good = slurp(tmp("a.ckpt"), &n);
    char *skip = interior_of_sections(n);
    pp_ckpt_reader r;
    pp_err e;
    ck_assert_int_eq(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e), 0);
    size_t at = (size_t)pp_ckpt_find(&r, "stage0.adam_m")->offset + 1234;
    pp_ckpt_close(&r);

    /* One flipped bit in a section's data: that section fails to read. */
    unsigned char *bad = malloc(n);
    ck_assert_ptr_nonnull(bad);
    memcpy(bad, good, n);
    bad[at] ^= 0x10;
    write_file(tmp("a.ckpt"), bad, n);
    ck_assert_msg(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e) == 0, "%s", e.msg);
    float w[1000];
    ck_assert_msg(pp_ckpt_read(&r, "stage0.weights", w, sizeof w, &e) == 0, "%s", e.msg);
    ck_fails_with(pp_ckpt_read(&r, "stage0.adam_m", w, sizeof w, &e), e, "a.ckpt",
                  "section 'stage0.adam_m' is corrupted");
    ck_fails_with(pp_ckpt_verify(&r, &e), e, "a.ckpt", "section 'stage0.adam_m' is corrupted");
    pp_ckpt_close(&r);

    /* A flipped bit in the header, a section header or the end record
     * fails at open; in section data at verify. Either way it is caught.
     * Tried at every byte outside section data and at both ends of each
     * section's data (every byte would take seconds). */
    for (size_t i = 0; i < n; i++) {
        if (skip[i])
            continue;
        memcpy(bad, good, n);
        bad[i] ^= 0x01;
        write_file(tmp("a.ckpt"), bad, n);
        int ok = pp_ckpt_open(&r, tmpdir, "a.ckpt", &e) == 0;
        if (ok) {
            ok = pp_ckpt_verify(&r, &e) == 0;
            pp_ckpt_close(&r);
        }
        ck_assert_msg(!ok, "bit flip at byte %zu of %zu went unnoticed", i, n);
    }

    /* Every truncation fails at open. */
    for (size_t len = 0; len < n; len++) {
        if (skip[len])
            continue;
        write_file(tmp("a.ckpt"), good, len);
        ck_assert_msg(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e) == -1,
                      "truncation to %zu of %zu bytes went unnoticed", len, n);
        ck_assert_ptr_nonnull(strstr(e.msg, "a.ckpt"));
    }
    write_file(tmp("a.ckpt"), good, 20);
    ck_fails_with(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e), e, "a.ckpt", "truncated");

    /* Not a checkpoint at all. */
    write_file(tmp("a.ckpt"), "hello, world, this is text", 26);
    ck_fails_with(pp_ckpt_open(&r, tmpdir, "a.ckpt", &e), e, "a.ckpt",
                  "not a ppsched checkpoint");
    free(skip);
    free(bad);
    free(good);
    remove_tmpdir();
}
END_TEST

START_TEST(ckpt_interrupted_write)
{
    make_tmpdir();
    write_ckpt("a.ckpt", 7.0f);
    float w[1000];
    for (int i = 0; i < 1000; i++)
        w[i] = -7.0f;
    pp_err e;

    /* Aborted half-way: the old checkpoint stays, no temp file is left. */
    pp_ckpt_writer wr;
    ck_assert_int_eq(pp_ckpt_writer_open(&wr, tmpdir, "a.ckpt", &SHAPE, &e), 0);
    ck_assert_int_eq(pp_ckpt_writer_add(&wr, "stage0.weights", w, sizeof w, &e), 0);
    pp_ckpt_writer_abort(&wr);
    check_ckpt("a.ckpt", 7.0f);
    ck_assert_int_eq(count_files(tmpdir), 1);

    /* A process killed half-way (no abort, no commit). */
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (pp_ckpt_writer_open(&wr, tmpdir, "a.ckpt", &SHAPE, &e) == 0)
            pp_ckpt_writer_add(&wr, "stage0.weights", w, sizeof w, &e);
        _exit(0);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    check_ckpt("a.ckpt", 7.0f);
    ck_assert_int_eq(count_files(tmpdir), 2); /* the dead writer's temp file */

    /* Garbage truncated files at temp names (ours and another's). */
    char tmpname[512];
    snprintf(tmpname, sizeof tmpname, "%s/a.ckpt.tmp.%ld", tmpdir, (long)getpid());
    write_file(tmpname, "PPCKPT\r\n\x01", 9);
    snprintf(tmpname, sizeof tmpname, "%s/a.ckpt.tmp.1", tmpdir);
    write_file(tmpname, "garbage", 7);
    check_ckpt("a.ckpt", 7.0f);

    /* A later writer succeeds over the stale temp file. */
    write_ckpt("a.ckpt", 8.0f);
    check_ckpt("a.ckpt", 8.0f);
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------ */
/* Queue.                                                              */
/* ------------------------------------------------------------------ */

enum { NITEMS = 10000 };

static void *producer(void *arg)
{
    pp_queue *q = arg;
    for (int i = 0; i < NITEMS; i++)
        if (pp_queue_push(q, i, (void *)(intptr_t)(3 * i + 1)) != PP_QUEUE_OK)
            return (void *)1;
    pp_queue_close(q);
    return NULL;
}

START_TEST(queue_in_order)
{
    pp_queue q;
    pp_err e;
    ck_assert_int_eq(pp_queue_init(&q, 2, &e), 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, producer, &q), 0);
    for (int i = 0; i < NITEMS; i++) {
        int tag;
        void *ptr;
        ck_assert_int_eq(pp_queue_pop(&q, &tag, &ptr), PP_QUEUE_OK);
        ck_assert_int_eq(tag, i);
        ck_assert_ptr_eq(ptr, (void *)(intptr_t)(3 * i + 1));
    }
    void *ret;
    pthread_join(t, &ret);
    ck_assert_ptr_null(ret);
    /* Closed and drained: pop and push fail. */
    ck_assert_int_eq(pp_queue_pop(&q, NULL, NULL), PP_QUEUE_CLOSED);
    ck_assert_int_eq(pp_queue_push(&q, 0, NULL), PP_QUEUE_CLOSED);
    pp_queue_free(&q);
    ck_assert_int_eq(pp_queue_init(&q, 0, &e), -1);
}
END_TEST

typedef struct {
    pp_queue *q;
    int push; /* push into a full queue instead of popping from an empty one */
    int rc;
} blocked_arg;

static void *blocked(void *arg)
{
    blocked_arg *a = arg;
    a->rc = a->push ? pp_queue_push(a->q, 99, NULL) : pp_queue_pop(a->q, NULL, NULL);
    return NULL;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

START_TEST(queue_abort_wakes_waiters)
{
    pp_queue empty, full;
    pp_err e;
    ck_assert_int_eq(pp_queue_init(&empty, 2, &e), 0);
    ck_assert_int_eq(pp_queue_init(&full, 1, &e), 0);
    ck_assert_int_eq(pp_queue_push(&full, 1, NULL), PP_QUEUE_OK);
    blocked_arg pa = {&empty, 0, 1}, qa = {&full, 1, 1};
    pthread_t tp, tq;
    ck_assert_int_eq(pthread_create(&tp, NULL, blocked, &pa), 0);
    ck_assert_int_eq(pthread_create(&tq, NULL, blocked, &qa), 0);
    sleep_ms(50); /* let both block */
    pp_queue_abort(&empty);
    pp_queue_abort(&full);
    pthread_join(tp, NULL);
    pthread_join(tq, NULL);
    ck_assert_int_eq(pa.rc, PP_QUEUE_CLOSED);
    ck_assert_int_eq(qa.rc, PP_QUEUE_CLOSED);
    /* Aborted: pop fails even with an item queued; drain still gets it. */
    ck_assert_int_eq(pp_queue_pop(&full, NULL, NULL), PP_QUEUE_CLOSED);
    int tag;
    void *ptr;
    ck_assert_int_eq(pp_queue_drain(&full, &tag, &ptr), 1);
    ck_assert_int_eq(tag, 1);
    ck_assert_int_eq(pp_queue_drain(&full, &tag, &ptr), 0);
    pp_queue_free(&empty);
    pp_queue_free(&full);
}
END_TEST

START_TEST(queue_close_and_timeouts)
{
    pp_queue q;
    pp_err e;
    ck_assert_int_eq(pp_queue_init(&q, 1, &e), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(pp_queue_pop_timed(&q, NULL, NULL, 0.05), PP_QUEUE_TIMEOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_double_ge(waited, 0.04);
    ck_assert_int_eq(pp_queue_push_timed(&q, 5, NULL, 0.0), PP_QUEUE_OK);
    ck_assert_int_eq(pp_queue_push_timed(&q, 6, NULL, 0.01), PP_QUEUE_TIMEOUT);
    /* Close lets the queued item out, then fails. */
    pp_queue_close(&q);
    ck_assert_int_eq(pp_queue_push(&q, 7, NULL), PP_QUEUE_CLOSED);
    int tag = 0;
    ck_assert_int_eq(pp_queue_pop_timed(&q, &tag, NULL, 1.0), PP_QUEUE_OK);
    ck_assert_int_eq(tag, 5);
    ck_assert_int_eq(pp_queue_pop_timed(&q, &tag, NULL, 1.0), PP_QUEUE_CLOSED);

    /* A popper blocked without a timeout is woken by close. */
    pp_queue q2;
    ck_assert_int_eq(pp_queue_init(&q2, 2, &e), 0);
    blocked_arg a = {&q2, 0, 1};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, blocked, &a), 0);
    sleep_ms(50);
    pp_queue_close(&q2);
    pthread_join(t, NULL);
    ck_assert_int_eq(a.rc, PP_QUEUE_CLOSED);
    pp_queue_free(&q2);
    pp_queue_free(&q);
}
END_TEST

static Suite *exec_io_suite(void)
{
    Suite *s = suite_create("exec_io");
    TCase *data = tcase_create("data");
    tcase_add_test(data, text_vocab_and_split);
    tcase_add_test(data, batches_and_wrap_around);
    tcase_add_test(data, position_save_restore);
    tcase_add_test(data, tinyshakespeare);
    tcase_add_test(data, tinyshakespeare_batches);
    tcase_add_test(data, text_errors);
    tcase_add_test(data, bin_loads);
    tcase_add_test(data, bin_random_offsets);
    tcase_add_test(data, bin_errors);
    suite_add_tcase(s, data);
    TCase *ckpt = tcase_create("checkpoint");
    tcase_add_test(ckpt, crc32_known_value);
    tcase_add_test(ckpt, ckpt_round_trip);
    tcase_add_test(ckpt, ckpt_shape_mismatch);
    tcase_add_test(ckpt, ckpt_corruption_detected);
    tcase_add_test(ckpt, ckpt_interrupted_write);
    suite_add_tcase(s, ckpt);
    TCase *queue = tcase_create("queue");
    tcase_add_test(queue, queue_in_order);
    tcase_add_test(queue, queue_abort_wakes_waiters);
    tcase_add_test(queue, queue_close_and_timeouts);
    suite_add_tcase(s, queue);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(exec_io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
