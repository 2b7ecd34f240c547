#define _POSIX_C_SOURCE 200809L /* fileno, fstat */

#include "data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------ */
/* Files.                                                              */
/* ------------------------------------------------------------------ */

/* Opens a regular file for reading and reports its size; an empty file is
 * an error for both formats. */
static FILE *open_sized(const char *path, size_t *size, pp_err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        pp_errf(e, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        pp_errf(e, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if (st.st_size == 0) {
        pp_errf(e, "%s: empty file", path);
        fclose(f);
        return NULL;
    }
    *size = (size_t)st.st_size;
    return f;
}

static int read_exact(FILE *f, void *buf, size_t n, const char *path, pp_err *e)
{
    if (fread(buf, 1, n, f) != n)
        return pp_errf(e, "%s: read failed: %s", path,
                       ferror(f) ? strerror(errno) : "file shrank while reading");
    return 0;
}

/* Little-endian decoding, so shards written on any machine read the same. */
static int32_t le_i32(const unsigned char *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

static size_t ninety_percent(size_t n)
{
    return n / 10 * 9 + n % 10 * 9 / 10; /* n * 9 / 10 without overflow */
}

/* ------------------------------------------------------------------ */
/* Text.                                                               */
/* ------------------------------------------------------------------ */

/* Vocabulary = the distinct bytes in sorted order; writes byte -> id. */
static int build_vocab(const unsigned char *text, size_t n, unsigned char symbols[256],
                       int id_of[256])
{
    int present[256] = {0};
    for (size_t i = 0; i < n; i++)
        present[text[i]] = 1;
    int v = 0;
    for (int c = 0; c < 256; c++) {
        id_of[c] = present[c] ? v : -1;
        if (present[c])
            symbols[v++] = (unsigned char)c;
    }
    return v;
}

static int check_splits(const pp_data *d, const char *val_path, pp_err *e)
{
    size_t need = (size_t)d->seq_len + 1;
    if (d->n_train < need)
        return pp_errf(e, "%s: training split has %zu tokens, fewer than seq_len + 1 = %zu",
                       d->path, d->n_train, need);
    if (d->n_val < need)
        return pp_errf(e, "%s: validation split has %zu tokens, fewer than seq_len + 1 = %zu",
                       val_path ? val_path : d->path, d->n_val, need);
    return 0;
}

static int data_begin(pp_data *d, const char *path, int seq_len, pp_err *e)
{
    memset(d, 0, sizeof *d);
    if (strlen(path) >= sizeof d->path)
        return pp_errf(e, "%s: path too long", path);
    snprintf(d->path, sizeof d->path, "%s", path);
    if (seq_len < 1)
        return pp_errf(e, "%s: seq_len must be at least 1 (got %d)", path, seq_len);
    d->seq_len = seq_len;
    return 0;
}

int pp_data_load_text(pp_data *d, const char *path, int seq_len, pp_err *e)
{
    if (data_begin(d, path, seq_len, e))
        return -1;
    size_t n;
    FILE *f = open_sized(path, &n, e);
    if (!f)
        return -1;
    unsigned char *text = malloc(n);
    uint16_t *tok = malloc(n * sizeof *tok);
    int rc = -1;
    if (!text || !tok) {
        pp_errf(e, "%s: out of memory (%zu bytes)", path, n);
        goto out;
    }
    if (read_exact(f, text, n, path, e))
        goto out;
    int id_of[256];
    d->vocab = build_vocab(text, n, d->symbols, id_of);
    for (size_t i = 0; i < n; i++)
        tok[i] = (uint16_t)id_of[text[i]];
    d->is_text = 1;
    d->owned[0] = tok;
    tok = NULL;
    d->train = d->owned[0];
    d->n_train = ninety_percent(n);
    d->val = d->train + d->n_train;
    d->n_val = n - d->n_train;
    rc = check_splits(d, NULL, e);
out:
    fclose(f);
    free(text);
    free(tok);
    if (rc)
        pp_data_free(d);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Token shards.                                                       */
/* ------------------------------------------------------------------ */

/* Checks the header against the file size; returns the token count. */
static int shard_header(FILE *f, size_t size, const char *path, size_t *ntok, pp_err *e)
{
    const size_t hbytes = PP_BIN_HEADER_INTS * 4;
    if (size < hbytes)
        return pp_errf(e, "%s: truncated shard: %zu bytes, the header alone is %zu", path,
                       size, hbytes);
    unsigned char h[PP_BIN_HEADER_INTS * 4];
    if (read_exact(f, h, hbytes, path, e))
        return -1;
    int32_t magic = le_i32(h), version = le_i32(h + 4), count = le_i32(h + 8);
    if (magic != PP_BIN_MAGIC)
        return pp_errf(e, "%s: bad magic %ld (expected %d): not an llm.c token shard", path,
                       (long)magic, PP_BIN_MAGIC);
    if (version != PP_BIN_VERSION)
        return pp_errf(e, "%s: bad version %ld (this build reads version %d)", path,
                       (long)version, PP_BIN_VERSION);
    if (count <= 0)
        return pp_errf(e, "%s: header announces %ld tokens; a shard needs at least one", path,
                       (long)count);
    size_t want = hbytes + 2 * (size_t)count;
    if (size < want)
        return pp_errf(e, "%s: truncated shard: header says %ld tokens, the file holds %zu",
                       path, (long)count, (size - hbytes) / 2);
    if (size > want)
        return pp_errf(e, "%s: %zu bytes after the %ld tokens the header announces", path,
                       size - want, (long)count);
    *ntok = (size_t)count;
    return 0;
}

/* Reads a whole shard into a fresh array; every token must be < vocab. */
static int load_shard(const char *path, int vocab, uint16_t **out, size_t *n, pp_err *e)
{
    size_t size, ntok;
    FILE *f = open_sized(path, &size, e);
    if (!f)
        return -1;
    uint16_t *tok = NULL;
    int rc = -1;
    if (shard_header(f, size, path, &ntok, e))
        goto out;
    tok = malloc(ntok * sizeof *tok);
    if (!tok) {
        pp_errf(e, "%s: out of memory (%zu tokens)", path, ntok);
        goto out;
    }
    if (read_exact(f, tok, ntok * sizeof *tok, path, e))
        goto out;
    for (size_t i = 0; i < ntok; i++) {
        const unsigned char *b = (const unsigned char *)&tok[i];
        tok[i] = (uint16_t)(b[0] | b[1] << 8); /* the file is little-endian */
        if (tok[i] >= vocab) {
            pp_errf(e, "%s: token %u at offset %zu is outside the vocabulary (size %d)", path,
                    (unsigned)tok[i], i, vocab);
            goto out;
        }
    }
    *out = tok;
    *n = ntok;
    tok = NULL;
    rc = 0;
out:
    fclose(f);
    free(tok);
    return rc;
}

int pp_data_load_bin(pp_data *d, const char *train_path, const char *val_path, int vocab,
                     int seq_len, pp_err *e)
{
    if (data_begin(d, train_path, seq_len, e))
        return -1;
    if (vocab < 1)
        return pp_errf(e, "%s: vocabulary size must be at least 1 (got %d)", train_path, vocab);
    d->vocab = vocab;
    size_t n;
    if (load_shard(train_path, vocab, &d->owned[0], &n, e))
        return -1;
    d->train = d->owned[0];
    if (val_path) {
        if (load_shard(val_path, vocab, &d->owned[1], &d->n_val, e)) {
            pp_data_free(d);
            return -1;
        }
        d->val = d->owned[1];
        d->n_train = n;
    } else {
        d->n_train = ninety_percent(n);
        d->val = d->train + d->n_train;
        d->n_val = n - d->n_train;
    }
    if (check_splits(d, val_path, e)) {
        pp_data_free(d);
        return -1;
    }
    return 0;
}

void pp_data_free(pp_data *d)
{
    free(d->owned[0]);
    free(d->owned[1]);
    memset(d, 0, sizeof *d);
}

/* ------------------------------------------------------------------ */
/* Batches.                                                            */
/* ------------------------------------------------------------------ */

static size_t sequences(size_t ntok, int T)
{
    return ntok > 0 ? (ntok - 1) / (size_t)T : 0;
}

size_t pp_data_train_sequences(const pp_data *d)
{
    return sequences(d->n_train, d->seq_len);
}

size_t pp_data_val_sequences(const pp_data *d)
{
    return sequences(d->n_val, d->seq_len);
}

/* Copies the sequence at token offset off of split s. */
static void copy_sequence(const uint16_t *s, size_t off, int T, int *inputs, int *targets)
{
    for (int t = 0; t < T; t++) {
        inputs[t] = s[off + (size_t)t];
        targets[t] = s[off + (size_t)t + 1];
    }
}

/* Copies B sequences starting at sequence `first` (mod nseq) of split s. */
static void fill(const uint16_t *s, size_t nseq, int T, int B, size_t first, int *inputs,
                 int *targets)
{
    for (int b = 0; b < B; b++)
        copy_sequence(s, (first + (size_t)b) % nseq * (size_t)T, T, inputs + (size_t)b * T,
                      targets + (size_t)b * T);
}

/* (a * b) mod m for non-negative a and b, without overflow for m < 2^32. */
static size_t mulmod(size_t a, size_t b, size_t m)
{
    return (a % m) * (b % m) % m;
}

void pp_data_val_batch(const pp_data *d, int B, long index, int *inputs, int *targets)
{
    size_t nseq = pp_data_val_sequences(d);
    size_t first = mulmod((size_t)(index < 0 ? 0 : index), (size_t)B, nseq);
    fill(d->val, nseq, d->seq_len, B, first, inputs, targets);
}

void pp_loader_init(pp_loader *l, const pp_data *d, int B)
{
    l->d = d;
    l->B = B;
    l->pos = 0;
}

void pp_loader_peek(const pp_loader *l, long ahead, int *inputs, int *targets)
{
    size_t nseq = pp_data_train_sequences(l->d);
    size_t k = l->pos / (size_t)l->d->seq_len;
    size_t first = (k + mulmod((size_t)(ahead < 0 ? 0 : ahead), (size_t)l->B, nseq)) % nseq;
    fill(l->d->train, nseq, l->d->seq_len, l->B, first, inputs, targets);
}

void pp_loader_skip(pp_loader *l, long n)
{
    size_t nseq = pp_data_train_sequences(l->d);
    size_t k = l->pos / (size_t)l->d->seq_len;
    k = (k + mulmod((size_t)(n < 0 ? 0 : n), (size_t)l->B, nseq)) % nseq;
    l->pos = k * (size_t)l->d->seq_len;
}

void pp_loader_next(pp_loader *l, int *inputs, int *targets)
{
    pp_loader_peek(l, 0, inputs, targets);
    pp_loader_skip(l, 1);
}

size_t pp_loader_pos(const pp_loader *l)
{
    return l->pos;
}

int pp_loader_set_pos(pp_loader *l, size_t pos, pp_err *e)
{
    size_t T = (size_t)l->d->seq_len, nseq = pp_data_train_sequences(l->d);
    if (pos % T != 0 || pos / T >= nseq)
        return pp_errf(e,
                       "%s: data position %zu is not the start of a sequence "
                       "(seq_len %zu, %zu sequences in the training split)",
                       l->d->path, pos, T, nseq);
    l->pos = pos;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Batches by index.                                                   */
/* ------------------------------------------------------------------ */

int pp_data_order_parse(const char *name, pp_data_order *order)
{
    if (!strcmp(name, "random"))
        *order = PP_ORDER_RANDOM;
    else if (!strcmp(name, "sequential"))
        *order = PP_ORDER_SEQUENTIAL;
    else
        return -1;
    return 0;
}

const char *pp_data_order_name(pp_data_order order)
{
    return order == PP_ORDER_RANDOM ? "random" : "sequential";
}

#define GOLDEN_GAMMA 0x9E3779B97F4A7C15ull

/* SplitMix64's output function (Steele, Lea and Flood, "Fast splittable
 * pseudorandom number generators", 2014): a bijection of 64-bit words in
 * which every input bit flips every output bit with probability ~1/2. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The counter-based generator: the key of draw (what, i, b) hashes the
 * tuple with mix64, and the draw is the SplitMix64 stream seeded with that
 * key. Uniform in [0, n), n >= 1, without bias: of 2^64 outputs the lowest
 * 2^64 mod n are rejected so that the rest hold every residue equally
 * often (a rejection has probability below n / 2^64, so one output almost
 * always suffices). */
enum { DRAW_TRAIN = 1, DRAW_VAL = 2 };

static uint64_t draw_below(uint64_t seed, int what, long i, int b, uint64_t n)
{
    uint64_t key = mix64(mix64(mix64(seed ^ (uint64_t)what) + (uint64_t)i) + (uint64_t)b);
    uint64_t reject_below = -n % n; /* 2^64 mod n */
    for (uint64_t k = 1;; k++) {
        uint64_t x = mix64(key + k * GOLDEN_GAMMA);
        if (x >= reject_below)
            return x % n;
    }
}

void pp_sampler_init(pp_sampler *s, const pp_data *d, int B, uint64_t run_seed,
                     pp_data_order order, int val_sample)
{
    s->d = d;
    s->B = B;
    s->order = order;
    /* "data" in ASCII: a domain of its own, so the hash is not one of the
     * weight streams (gpt_cpu.c keys those by run_seed ^ FNV-1a(name)) */
    s->seed = mix64(run_seed ^ 0x64617461ull);
    s->val_sample = val_sample > 0 ? val_sample : 0;
}

void pp_sampler_batch(const pp_sampler *s, long mb, int *inputs, int *targets)
{
    const pp_data *d = s->d;
    size_t nseq = pp_data_train_sequences(d);
    if (s->order == PP_ORDER_SEQUENTIAL) {
        size_t first = mulmod((size_t)(mb < 0 ? 0 : mb), (size_t)s->B, nseq);
        fill(d->train, nseq, d->seq_len, s->B, first, inputs, targets);
        return;
    }
    uint64_t starts = d->n_train - (size_t)d->seq_len; /* offsets 0 .. n_train - T - 1 */
    for (int b = 0; b < s->B; b++)
        copy_sequence(d->train, draw_below(s->seed, DRAW_TRAIN, mb, b, starts), d->seq_len,
                      inputs + (size_t)b * d->seq_len, targets + (size_t)b * d->seq_len);
}

long pp_sampler_val_batches(const pp_sampler *s)
{
    if (s->val_sample > 0)
        return s->val_sample;
    size_t nseq = pp_data_val_sequences(s->d);
    return (long)((nseq + (size_t)s->B - 1) / (size_t)s->B);
}

void pp_sampler_val_batch(const pp_sampler *s, long i, int *inputs, int *targets)
{
    const pp_data *d = s->d;
    if (s->val_sample == 0) {
        pp_data_val_batch(d, s->B, i, inputs, targets);
        return;
    }
    size_t nseq = pp_data_val_sequences(d), T = (size_t)d->seq_len;
    for (int b = 0; b < s->B; b++)
        copy_sequence(d->val, draw_below(s->seed, DRAW_VAL, i, b, nseq) * T, d->seq_len,
                      inputs + (size_t)b * T, targets + (size_t)b * T);
}
