#include "mailbox.h"

#include <stdlib.h>
#include <time.h>

int pp_mailbox_init(pp_mailbox *m, int capacity, pp_err *e)
{
    m->parked = NULL;
    m->nparked = m->capparked = 0;
    m->unwanted_mb = -1;
    return pp_queue_init(&m->q, capacity, e);
}

void pp_mailbox_free(pp_mailbox *m, void (*release)(void *ctx, void *buf), void *ctx)
{
    int tag;
    void *ptr;
    while (pp_queue_drain(&m->q, &tag, &ptr))
        release(ctx, ptr);
    for (int i = 0; i < m->nparked; i++)
        release(ctx, m->parked[i].buf);
    free(m->parked);
    pp_queue_free(&m->q);
}

static int take_parked(pp_mailbox *m, int mb, void **buf)
{
    for (int i = 0; i < m->nparked; i++)
        if (m->parked[i].mb == mb) {
            *buf = m->parked[i].buf;
            m->parked[i] = m->parked[--m->nparked];
            return 1;
        }
    return 0;
}

/* A message that arrived before it was wanted. At most the queue's
 * capacity wait here: a sender that can legally be that far ahead has
 * filled the queue and blocks. */
static int park(pp_mailbox *m, int mb, void *buf)
{
    for (int i = 0; i < m->nparked; i++)
        if (m->parked[i].mb == mb)
            return PP_MAILBOX_UNWANTED;
    if (m->nparked >= m->q.capacity)
        return PP_MAILBOX_UNWANTED;
    if (m->nparked == m->capparked) {
        int cap = m->capparked ? m->capparked * 2 : 8;
        pp_parked_msg *p = realloc(m->parked, (size_t)cap * sizeof *p);
        if (!p)
            return PP_MAILBOX_NOMEM;
        m->parked = p;
        m->capparked = cap;
    }
    m->parked[m->nparked++] = (pp_parked_msg){mb, buf};
    return PP_QUEUE_OK;
}

int pp_mailbox_take(pp_mailbox *m, int mb, double timeout_s, void **buf)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double deadline = ts.tv_sec + ts.tv_nsec * 1e-9 + timeout_s;
    while (!take_parked(m, mb, buf)) {
        int tag;
        void *ptr;
        double left = -1;
        if (timeout_s >= 0) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            left = deadline - (ts.tv_sec + ts.tv_nsec * 1e-9);
            if (left < 0)
                left = 0;
        }
        int rc = pp_queue_pop_timed(&m->q, &tag, &ptr, left);
        if (rc != PP_QUEUE_OK)
            return rc;
        if (tag == mb) {
            *buf = ptr;
            return PP_QUEUE_OK;
        }
        if ((rc = park(m, tag, ptr)) != PP_QUEUE_OK) {
            /* handed back for the caller to free: the run fails anyway */
            m->unwanted_mb = tag;
            *buf = ptr;
            return rc;
        }
    }
    return PP_QUEUE_OK;
}
