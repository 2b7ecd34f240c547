/* The job's items, their digest, and the check that all ranks agree. */
#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

void pp_job_init(pp_job *j)
{
    memset(j, 0, sizeof *j);
}

static pp_job_item *add(pp_job *j, const char *name)
{
    if (j->n >= PP_JOB_ITEMS)
        return NULL;
    pp_job_item *it = &j->item[j->n++];
    snprintf(it->name, sizeof it->name, "%s", name);
    return it;
}

void pp_job_number(pp_job *j, const char *name, double v)
{
    pp_job_item *it = add(j, name);
    if (!it)
        return;
    memcpy(&it->value, &v, sizeof v);
    snprintf(it->text, sizeof it->text, "%.17g", v);
}

void pp_job_text(pp_job *j, const char *name, const char *text)
{
    pp_job_item *it = add(j, name);
    if (!it)
        return;
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)text, strlen(text), d);
    memcpy(&it->value, d, sizeof it->value);
    snprintf(it->text, sizeof it->text, "%s", text);
}

void pp_job_hash(pp_job *j, const char *name, uint64_t h)
{
    pp_job_item *it = add(j, name);
    if (!it)
        return;
    it->value = h;
    snprintf(it->text, sizeof it->text, "digest %016llx", (unsigned long long)h);
}

void pp_job_bytes(pp_job *j, const char *name, const void *bytes, size_t n)
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256(bytes, n, d);
    uint64_t h;
    memcpy(&h, d, sizeof h);
    pp_job_hash(j, name, h);
}

void pp_job_digest(const pp_job *j, unsigned char out[PP_DIGEST_BYTES])
{
    SHA256((const unsigned char *)j, sizeof *j, out);
}

/* The first difference between a rank's job and rank 0's, as a message. */
static int differ(const pp_job *zero, const pp_job *other, int r, pp_err *e)
{
    if (other->n > PP_JOB_ITEMS)
        return pp_errf(e, "the ranks disagree: rank %d sent a malformed job", r);
    for (int i = 0; i < zero->n || i < other->n; i++) {
        const pp_job_item *a = &zero->item[i], *b = &other->item[i];
        if (i >= zero->n || i >= other->n || strcmp(a->name, b->name))
            return pp_errf(e, "the ranks disagree: rank %d was built or launched differently "
                              "(it checks other settings than rank 0)", r);
        if (a->value != b->value)
            return pp_errf(e, "the ranks disagree: rank %d has %s %s, rank 0 has %s", r,
                           b->name, b->text, a->text);
    }
    return 0;
}

int pp_job_agree(pp_store *st, const pp_job *mine, int *differ_out, pp_err *e)
{
    *differ_out = 0;
    int world = pp_store_world(st);
    pp_job *all = malloc((size_t)world * sizeof *all);
    if (!all)
        return pp_errf(e, "out of memory");
    int rc = pp_store_allgather(st, mine, sizeof *mine, all, e);
    for (int r = 1; rc == 0 && r < world; r++) {
        if (all[r].n < 0 || all[r].n > PP_JOB_ITEMS)
            all[r].n = PP_JOB_ITEMS + 1; /* reads as "launched differently" */
        for (int i = 0; i < PP_JOB_ITEMS; i++) { /* the peer's text is printed */
            all[r].item[i].name[sizeof all[r].item[i].name - 1] = 0;
            all[r].item[i].text[sizeof all[r].item[i].text - 1] = 0;
        }
        rc = differ(&all[0], &all[r], r, e);
        *differ_out = rc < 0;
    }
    free(all);
    return rc;
}
