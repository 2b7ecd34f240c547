/* The socket transport: stages in different processes (one stage each),
 * connected by one TCP connection per link. Works with any backend (it
 * moves bytes through the host), which makes it the CPU backend's
 * multi-process transport and a reference for the NCCL one. */
#ifndef PP_TRANSPORT_TCP_H
#define PP_TRANSPORT_TCP_H

#include "launch/store.h"
#include "transport.h"

/* Stage `stage` of P (this process); the processes meet through `st`
 * (collective: every rank calls it). `capacity` messages per link and
 * direction are buffered before a sender blocks; waits longer than
 * timeout_s fail the run. The backend stage arrives through attach. */
int pp_transport_tcp_create(pp_store *st, int stage, int P, int capacity, double timeout_s,
                            pp_transport **out, pp_err *e);

#endif
