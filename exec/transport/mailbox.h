/* A receiver's mailbox for one link and direction: a bounded queue of
 * (micro-batch, buffer) messages in arrival order, plus the messages that
 * arrived before the receiver wanted them. Stages consume in whatever
 * order their IR says, which need not be the order their neighbour sends
 * in. Only the receiving thread takes from a mailbox. */
#ifndef PP_MAILBOX_H
#define PP_MAILBOX_H

#include "queue.h"

typedef struct {
    int mb;
    void *buf;
} pp_parked_msg;

typedef struct {
    pp_queue q;
    pp_parked_msg *parked;
    int nparked, capparked;
    int unwanted_mb; /* after PP_MAILBOX_UNWANTED: the message that overflowed */
} pp_mailbox;

/* Besides PP_QUEUE_OK, _CLOSED, _TIMEOUT. UNWANTED: the sender sent a
 * micro-batch twice, or more messages ahead than the mailbox's capacity
 * (no schedule the run accepted does: the sender is broken or hostile). */
enum { PP_MAILBOX_NOMEM = -3, PP_MAILBOX_UNWANTED = -4 };

int pp_mailbox_init(pp_mailbox *m, int capacity, pp_err *e);
/* Frees the mailbox, handing every message still in it to release. */
void pp_mailbox_free(pp_mailbox *m, void (*release)(void *ctx, void *buf), void *ctx);
/* Takes message mb into *buf, waiting at most timeout_s for it in all
 * (messages for other micro-batches do not restart the wait). */
int pp_mailbox_take(pp_mailbox *m, int mb, double timeout_s, void **buf);

#endif
