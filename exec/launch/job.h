/* What the ranks of one job must agree on (the schedule, the model's
 * shape, the micro-batch size, the data, the seed, ...): named values that
 * every rank fills in the same order. Their digest travels in every
 * handshake (auth.h); pp_job_agree compares them item by item, so that a
 * mistake in one rank's command line stops every rank with one line
 * naming what differs, before any data moves. */
#ifndef PP_JOB_H
#define PP_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "error.h"
#include "store.h"

#define PP_JOB_ITEMS 32
typedef struct {
    char name[32];   /* "micro-batch size" */
    char text[32];   /* the value as the messages print it */
    uint64_t value;  /* what is compared */
} pp_job_item;

typedef struct pp_job {
    int32_t n, pad;
    pp_job_item item[PP_JOB_ITEMS];
} pp_job;

void pp_job_init(pp_job *j);
/* Adds an item (silently ignored past PP_JOB_ITEMS: a programming error
 * caught by the tests). */
void pp_job_number(pp_job *j, const char *name, double v);
void pp_job_text(pp_job *j, const char *name, const char *text);
/* Bytes too long to print (a data set, an IR): compared by SHA-256. */
void pp_job_bytes(pp_job *j, const char *name, const void *bytes, size_t n);
/* An identity already reduced to 64 bits (a hash the caller has). */
void pp_job_hash(pp_job *j, const char *name, uint64_t h);

/* SHA-256 of the items: what the handshakes carry. */
void pp_job_digest(const pp_job *j, unsigned char out[PP_DIGEST_BYTES]);

/* Collective: every rank compares every rank's job with rank 0's and
 * fails, identically everywhere, naming the first rank and item that
 * differ ("rank 1 has micro-batch size 8, rank 0 has 4"), with *differ
 * set (it stays 0 when the store failed). */
int pp_job_agree(pp_store *st, const pp_job *mine, int *differ, pp_err *e);

#endif
