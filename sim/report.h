/* Printing metrics: a human table, JSON (one object per schedule, an array
 * for compare) and CSV (one row per schedule). */
#ifndef PP_REPORT_H
#define PP_REPORT_H

#include <stdio.h>

#include "metrics.h"

/* Detailed report of one run: summary and per-stage table. */
void pp_report_table(FILE *f, const pp_metrics *m, const pp_model_desc *model);
/* Side-by-side table of several runs (fits 80 columns), then peak memory
 * per stage in GiB. */
void pp_report_compare_table(FILE *f, const pp_metrics *ms, int n, const pp_model_desc *model);
/* JSON: an object for n == 1 and !as_array, else an array. With a model
 * whose optimizer is not plain AdamW (or has the delay correction), the
 * table, JSON and CSV add its state per stage and the difference to
 * AdamW's; model may be NULL. */
int pp_report_json(FILE *f, const pp_metrics *ms, int n, int as_array,
                   const pp_model_desc *model);
void pp_report_csv(FILE *f, const pp_metrics *ms, int n, const pp_model_desc *model);

#endif
