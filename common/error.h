/* Error reporting: functions that can fail take a pp_err* and return -1 after
 * filling it with one human-readable line (no trailing newline). The tools
 * print it as "ppsim: error: <msg>" and exit 2. */
#ifndef PP_ERROR_H
#define PP_ERROR_H

#include <stdio.h>

typedef struct {
    char msg[512];
} pp_err;

/* Formats the message into e (if e is not NULL) and returns -1. */
int pp_errf(pp_err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes the existing message: "<prefix>: <old message>". Returns -1. */
int pp_err_prefix(pp_err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "<tool>: error: <msg>" and a newline to f, with every control
 * character of the message (text from a file may hold a newline or a
 * terminal escape) written as \xNN: always exactly one line. */
void pp_err_print(FILE *f, const char *tool, const pp_err *e);

#endif
