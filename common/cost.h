/* Cost model of the simulator (DESIGN §4): per-op durations per stage,
 * alpha-beta communication, seeded jitter, stragglers, or a measured
 * profile written by pprun. Times are in abstract time units (seconds when
 * loaded from a profile). */
#ifndef PP_COST_H
#define PP_COST_H

/* The largest duration or latency a cost model takes, in its time units
 * (seconds in a profile): ~32 000 years of seconds, far below where a sum of
 * millions of them would lose precision or overflow. */
#define PP_MAX_DURATION 1e12

#include <stdint.h>

#include "error.h"

typedef struct {
    int stages;
    double *fwd, *bwd, *inp, *wgt, *opt; /* per stage durations */
    double barrier;                      /* duration of a BARRIER */
    /* An overlapped forward and backward on one rank (DualPipeV) take
     * max(F, B) + (1 - X) min(F, B): X = 0 no gain (the default), 1 the
     * shorter one hides entirely. */
    double overlap_efficiency;
    double comm_latency;     /* alpha, time units per message */
    double comm_bandwidth;   /* bytes per time unit; 0 = infinite */
    double boundary_bytes;   /* bytes per activation/gradient message */
    double jitter;           /* each duration *= U[1-j, 1+j], j in [0,1) */
    uint64_t seed;
    int straggler_stage;     /* -1 = none */
    double straggler_factor; /* durations on that stage *= factor ... */
    double straggler_from, straggler_until; /* ... when starting in [from, until) */
    char unit[16];           /* "units" or "s" */
} pp_cost;

/* Uniform defaults: F=1, B=2, I=W=1 (split of B), OPT=0, free comm. */
int pp_cost_init(pp_cost *c, int stages, pp_err *e);
void pp_cost_free(pp_cost *c);
/* After changing bwd: I and W default to halves of B unless set. */
void pp_cost_split_backward(pp_cost *c);

/* Duration of action op on stage s starting at time t, with jitter drawn
 * from (seed, stage, index) so results do not depend on event order. */
double pp_cost_duration(const pp_cost *c, int op, int stage, uint64_t index,
                        double t);
/* Duration of an overlapped pair whose parts take a and b alone. */
double pp_cost_overlap(const pp_cost *c, double a, double b);
/* Transfer time of one boundary message. */
double pp_cost_comm_time(const pp_cost *c);

/* Measured profile (written by pprun --profile, read by ppsim --profile):
 * {"format":"ppsched-profile","version":1,"unit":"s","stages":P,
 *  "fwd":[...],"bwd":[...],"opt":[...], "comm": t (optional)}. */
int pp_cost_load_profile(pp_cost *c, const char *path, pp_err *e);
int pp_cost_save_profile(const pp_cost *c, const char *path, pp_err *e);

/* Parses "1.5" or a per-stage list "1,1,1.3,1" into dst[stages]. */
int pp_parse_per_stage(const char *text, double *dst, int stages,
                       const char *flag, pp_err *e);

#endif
