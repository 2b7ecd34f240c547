#include "mailbox.h"

#include <stdlib.h>

int pp_mailbox_init(pp_mailbox *m, int capacity, pp_err *e)
{
    m->parked = NULL;
    m->nparked = m->capparked = 0;
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

static int park(pp_mailbox *m, int mb, void *buf)
{
    if (m->nparked == m->capparked) {
        int cap = m->capparked ? m->capparked * 2 : 8;
        pp_parked_msg *p = realloc(m->parked, (size_t)cap * sizeof *p);
        if (!p)
            return -1;
        m->parked = p;
        m->capparked = cap;
    }
    m->parked[m->nparked++] = (pp_parked_msg){mb, buf};
    return 0;
}

int pp_mailbox_take(pp_mailbox *m, int mb, double timeout_s, void **buf)
{
    while (!take_parked(m, mb, buf)) {
        int tag;
        void *ptr;
        int rc = pp_queue_pop_timed(&m->q, &tag, &ptr, timeout_s);
        if (rc != PP_QUEUE_OK)
            return rc;
        if (tag == mb) {
            *buf = ptr;
            return PP_QUEUE_OK;
        }
        if (park(m, tag, ptr) < 0) {
            /* keep it queued-equivalent: the caller fails the run anyway */
            *buf = ptr;
            return PP_MAILBOX_NOMEM;
        }
    }
    return PP_QUEUE_OK;
}
