/* Training data for the executor (DESIGN §6).
 *
 * Two sources:
 * - a text file: the vocabulary is the sorted set of distinct bytes in the
 *   file (tinyshakespeare: 65 symbols), a token is the byte's index in that
 *   set; the first 90% of the tokens train, the last 10% validate;
 * - llm.c-style token shards: a header of 256 little-endian int32
 *   (magic 20240520, version 1, token count), then that many uint16 tokens;
 *   validation comes from a second shard, or else the last 10%.
 *
 * A split is cut into sequences of T + 1 tokens that overlap by one (the
 * inputs of sequence k are tokens [kT, kT + T), its targets the same shifted
 * by one), so the k-th sequence starts at token offset k * T. Both splits
 * must hold at least one sequence. */
#ifndef PP_DATA_H
#define PP_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define PP_BIN_MAGIC 20240520
#define PP_BIN_VERSION 1
#define PP_BIN_HEADER_INTS 256

typedef struct {
    char path[4096];        /* the training file, for messages */
    int vocab;              /* symbols: distinct bytes (text) or the model's (bin) */
    int seq_len;            /* T the splits were checked against */
    int is_text;
    unsigned char symbols[256]; /* text only: token id -> byte */
    const uint16_t *train;  /* n_train tokens */
    const uint16_t *val;    /* n_val tokens */
    size_t n_train, n_val;
    uint16_t *owned[2];     /* what pp_data_free releases */
} pp_data;

/* Loads a text file; fails when either split is shorter than seq_len + 1. */
int pp_data_load_text(pp_data *d, const char *path, int seq_len, pp_err *e);

/* Loads a token shard. val_path may be NULL (then the last 10% of the train
 * shard validates). Every token must be < vocab. */
int pp_data_load_bin(pp_data *d, const char *train_path, const char *val_path, int vocab,
                     int seq_len, pp_err *e);

void pp_data_free(pp_data *d);

/* Sequences of length seq_len in the training / validation split. */
size_t pp_data_train_sequences(const pp_data *d);
size_t pp_data_val_sequences(const pp_data *d);

/* Validation batch `index`: sequences (index * B + b) mod val_sequences
 * for b < B, so batches are the same in every run and every evaluation.
 * Writes inputs[B*T] and targets[B*T]. */
void pp_data_val_batch(const pp_data *d, int B, long index, int *inputs, int *targets);

/* Batches by index, as a run fetches them: stage 0 and the last stage each
 * fetch micro-batch mb on their own thread, in any order, so a batch is a
 * pure function of (data, B, seed, order, index) and the sampler is read
 * only after pp_sampler_init (nothing to free: it borrows d).
 *
 * Training micro-batch mb, sequence b < B:
 * - random (nanoGPT's get_batch): inputs tokens[off, off + T), targets
 *   shifted by one, off uniform over every token offset in
 *   [0, n_train - T - 1], drawn independently for each (mb, b);
 * - sequential: the aligned sequences (mb * B + b) mod train_sequences, what
 *   pp_loader_peek(mb) returns from position 0, byte for byte.
 * Validation, val_sample = 0: the whole split, every sequence in order in
 * n = ceil(val_sequences / B) batches (pp_data_val_batch). With
 * val_sequences = qB + r, r > 0, the last batch is completed with sequences
 * 0 .. B - r - 1, which so count twice: as the evaluation averages batch
 * means, the figure is the mean over the nB slots, exact when r = 0, else
 * off the mean over the sequences by (B - r) / (nB) times the difference
 * between those B - r sequences' mean loss and the split's (tinyshakespeare
 * at T = 64, B = 12: 10 of 1752 slots). An exact mean needs the evaluation
 * to weigh a partial batch by its sequences.
 * val_sample = N > 0: N batches of aligned validation sequences drawn
 * uniformly (with replacement) for each (batch, b): the same N batches in
 * every evaluation and every run with this seed, and an unbiased estimate
 * of the mean over the whole split. */
typedef enum { PP_ORDER_RANDOM, PP_ORDER_SEQUENTIAL } pp_data_order;

typedef struct {
    const pp_data *d;
    int B;
    pp_data_order order;
    uint64_t seed;   /* the data seed, derived from the run's seed */
    int val_sample;  /* validation batches drawn at random; 0: the whole split */
} pp_sampler;

/* "random" / "sequential" -> *order; -1 for anything else. */
int pp_data_order_parse(const char *name, pp_data_order *order);
const char *pp_data_order_name(pp_data_order order);

/* run_seed is the run's one seed (pprun --seed), which also initialises
 * the weights: the data seed is a hash of it, so the data's random stream
 * is not the weights'. */
void pp_sampler_init(pp_sampler *s, const pp_data *d, int B, uint64_t run_seed,
                     pp_data_order order, int val_sample);
/* Writes micro-batch mb's inputs[B*T] and targets[B*T]. */
void pp_sampler_batch(const pp_sampler *s, long mb, int *inputs, int *targets);
/* Validation batches per evaluation: val_sample, or ceil(val_sequences / B). */
long pp_sampler_val_batches(const pp_sampler *s);
/* Writes validation batch i (0 <= i < pp_sampler_val_batches). */
void pp_sampler_val_batch(const pp_sampler *s, long i, int *inputs, int *targets);

/* Sequential reader of the training split (a run fetches by index through
 * pp_sampler, whose sequential order is this reader's). Its position is a token offset
 * (a multiple of T below train_sequences * T): save it in a checkpoint and
 * restore it to get the same next batches. Past the last whole sequence it
 * wraps to offset 0. */
typedef struct {
    const pp_data *d;
    int B;
    size_t pos;
} pp_loader;

void pp_loader_init(pp_loader *l, const pp_data *d, int B);
/* Writes the next micro-batch's inputs[B*T] and targets[B*T]; advances. */
void pp_loader_next(pp_loader *l, int *inputs, int *targets);
/* The micro-batch `ahead` batches after the current position, without
 * moving (ahead = 0 is what pp_loader_next returns next). Lets stage
 * threads fetch micro-batches by index. */
void pp_loader_peek(const pp_loader *l, long ahead, int *inputs, int *targets);
/* Moves the position forward by n batches. */
void pp_loader_skip(pp_loader *l, long n);
size_t pp_loader_pos(const pp_loader *l);
/* Restores a position saved by pp_loader_pos; fails when it is not a
 * sequence start of this data at this seq_len. */
int pp_loader_set_pos(pp_loader *l, size_t pos, pp_err *e);

#endif
