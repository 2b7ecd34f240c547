/* Atomic file output: write to PATH.tmp.<pid>, fsync, rename over PATH. A
 * crash or an error half-way leaves the previous file (or none), never a
 * truncated file that looks complete. */
#ifndef PP_ATOMIC_FILE_H
#define PP_ATOMIC_FILE_H

#include <stdio.h>

#include "error.h"

typedef struct {
    FILE *f;
    char path[4096];
    char tmp[4096 + 32];
} pp_atomic_file;

int pp_atomic_open(pp_atomic_file *af, const char *path, pp_err *e);
/* Flushes, fsyncs and renames; on any failure removes the temp file. */
int pp_atomic_commit(pp_atomic_file *af, pp_err *e);
/* Discards the temp file (after an error while writing). */
void pp_atomic_abort(pp_atomic_file *af);

/* The whole of it for one writer: write(f, obj, e) into PATH's temp file,
 * then commit, or discard it when write returns -1 (e, prefixed with
 * PATH, says why). */
typedef int (*pp_atomic_writer)(FILE *f, const void *obj, pp_err *e);
int pp_atomic_save(const char *path, pp_atomic_writer write, const void *obj, pp_err *e);

#endif
