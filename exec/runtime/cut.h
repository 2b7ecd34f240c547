/* Consistent cuts of a schedule, for checkpoints (DESIGN §6). The cut
 * after update K puts every stage right after its own K-th OPT: stages
 * stop at different moments, so a message may be sent before its sender's
 * cut and consumed after its receiver's: the sender keeps a copy (its
 * "outbox") and resends it on resume. The opposite, a message sent after
 * the sender's cut but consumed before the receiver's, would make the cut
 * inconsistent; such a K is refused. */
#ifndef PP_CUT_H
#define PP_CUT_H

#include <stdint.h>

#include "ir.h"

typedef struct pp_cut {
    int K;             /* the cut follows the K-th OPT of every stage */
    size_t *pos;       /* [P] index of the first action after the cut */
    uint8_t **keep;    /* [P][actions]: 1 = this send goes to the outbox */
} pp_cut;

/* Plans the cut after update K (1 <= K < updates on every stage). */
int pp_cut_plan(const pp_schedule *s, int K, pp_cut *cut, pp_err *e);
void pp_cut_free(pp_cut *cut, int P);

#endif
