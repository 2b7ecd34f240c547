/* Blocking TCP with deadlines, for the rendezvous store and the socket
 * transport. A deadline is an absolute pp_net_now() time; < 0 waits
 * forever. Errors are one line; a peer that closed its end reads as
 * "closed the connection". */
#ifndef PP_NET_H
#define PP_NET_H

#include <stddef.h>

#include "error.h"

double pp_net_now(void); /* CLOCK_MONOTONIC, seconds */

/* Listens on the address host names (NULL or "0.0.0.0": every
 * interface); port 0 picks a free one (*bound gets it). */
int pp_net_listen(const char *host, int port, int *bound, pp_err *e);
/* Sends small messages at once (TCP_NODELAY). */
void pp_net_nodelay(int fd);
/* Accepts one connection; -1 with "timed out" past the deadline. */
int pp_net_accept(int lfd, double deadline, pp_err *e);
/* Connects, retrying while the listener is not up yet, until the deadline. */
int pp_net_connect(const char *host, int port, double deadline, pp_err *e);

int pp_net_write_all(int fd, const void *buf, size_t n, double deadline, pp_err *e);
int pp_net_read_all(int fd, void *buf, size_t n, double deadline, pp_err *e);

/* A length-prefixed message (8-byte length, then the bytes). */
int pp_net_write_msg(int fd, const void *buf, size_t n, double deadline, pp_err *e);
/* Reads one into a fresh malloc'd buffer (at most max bytes). */
int pp_net_read_msg(int fd, void **buf, size_t *n, size_t max, double deadline, pp_err *e);

#endif
