/* A stage's weight versions: a small set of (version, buffer, references).
 * The current version holds one reference, each in-flight micro-batch whose
 * backward reads the stash holds one on its forward's version, and a
 * version that the stage's next F@vK names holds one. OPT updates in place
 * when nothing else references the current version, else on a copy: so
 * PACI and 1F1B keep one copy, PipeDream-2BW two, PipeDream up to P-s. */
#ifndef PP_WEIGHTS_H
#define PP_WEIGHTS_H

#include "model/backend.h"
#include "spares.h"

typedef struct {
    int version;
    int refs;
    void *buf;
} pp_weight_version;

typedef struct {
    const pp_backend_ops *b;
    void *stage;
    size_t bytes;
    pp_weight_version *v;
    int n, cap;
    int current;     /* version number of the current weights */
    int pinned;      /* version held for a later F@vK, -1 */
    int peak_copies;
    pp_spares spare; /* buffers of versions nobody reads any more, for the
                        next copy: no allocation per update */
} pp_weight_store;

/* Version 0 initialised from seed. */
int pp_weights_init(pp_weight_store *ws, const pp_backend_ops *b, void *stage, uint64_t seed,
                    pp_err *e);
void pp_weights_free(pp_weight_store *ws);
/* Buffer of version v, or NULL when it is not alive. */
void *pp_weights_get(const pp_weight_store *ws, int version);
int pp_weights_ref(pp_weight_store *ws, int version, int delta);
/* Keeps `version` alive for a later forward (-1: none). */
int pp_weights_pin(pp_weight_store *ws, int version);
/* The buffer the next update may write: the current one when nobody else
 * reads it, else a fresh copy registered as version current+1. Call
 * pp_weights_commit after writing it. */
void *pp_weights_begin_update(pp_weight_store *ws, pp_err *e);
void pp_weights_commit_update(pp_weight_store *ws);

/* Restoring from a checkpoint: drop every version, then adopt buffers
 * (allocated by the backend) as versions with their reference counts. */
void pp_weights_reset(pp_weight_store *ws, int current, int pinned);
int pp_weights_adopt(pp_weight_store *ws, int version, void *buf, int refs);

#endif
