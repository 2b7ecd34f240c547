/* SVG timeline in the style of a paper figure: one row per rank (a stage
 * per rank: per stage), a box per action coloured by kind and shaded by
 * micro-batch (several stages per rank: coloured by the rank's chunk and
 * shaded by kind, an overlapped pair split in two halves), a time axis and
 * a legend. Streamed, so it scales with the number of actions. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "timeline.h"

#define LEFT 78.0    /* room for "stage N" */
#define RIGHT 24.0
#define TOP 44.0     /* title */
#define AXIS_H 42.0  /* ticks, numbers and axis label */
#define LEGEND_H 30.0
#define MAX_PLOT_W 1500.0
#define MIN_PLOT_W 480.0
#define PX_PER_TYPICAL 24.0 /* a typical action gets this many pixels */
#define MAX_LABELLED 4000   /* beyond this many actions, no text in boxes */
#define SHADES 3

/* Per kind, SHADES shades from dark to light; micro-batch picks one. */
static const char *const palette[PP_OP_COUNT][SHADES] = {
    [PP_OP_F] = {"#2f62a8", "#4f86cc", "#80aee6"},
    [PP_OP_B] = {"#2a7d4f", "#43a36b", "#7cc796"},
    [PP_OP_I] = {"#c8691c", "#e08a3c", "#f0b070"},
    [PP_OP_W] = {"#6c4f9e", "#8d70bf", "#b39ddb"},
    [PP_OP_OPT] = {"#8b0000", "#8b0000", "#8b0000"},
    [PP_OP_BARRIER] = {"#444444", "#444444", "#444444"},
};
#define IDLE_FILL "#ececec"

/* Several stages per rank: a hue per chunk (the rank's first, second, ...
 * stage), F light, B and I dark, W striped in both (patterns w0..w3). */
#define CHUNK_HUES 4
static const char *const chunk_palette[CHUNK_HUES][PP_OP_COUNT] = {
    {"#80aee6", "#2f62a8", "#2f62a8", "#4f86cc", "#8b0000", "#444444"},
    {"#f0b070", "#b0560f", "#b0560f", "#e08a3c", "#8b0000", "#444444"},
    {"#7cc796", "#2a7d4f", "#2a7d4f", "#43a36b", "#8b0000", "#444444"},
    {"#b39ddb", "#5a3f8c", "#5a3f8c", "#8d70bf", "#8b0000", "#444444"},
};

typedef struct {
    double t0, t1;  /* time range drawn */
    double scale;   /* pixels per time unit */
    double plot_w, row_h, row_gap;
    double width, height;
    double mark_w;   /* width of an OPT mark: narrow next to typical boxes */
    int label_boxes; /* few enough actions for text inside boxes */
    int outline;     /* boxes wide enough to separate with white edges */
    int has_split, has_opt, has_barrier;
    int multi;       /* several stages per rank: rows are ranks */
    int rows;
} layout;

/* XML text or attribute value. */
static void xml_str(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t' || *s == '\n')
                fputc(*s, f); /* XML 1.0 forbids other control bytes */
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Lower quartile of positive durations, from an evenly strided sample: the
 * short ops (F) are the boxes that must be wide enough for labels. */
static double typical_duration(const pp_timeline *t, size_t total)
{
    enum { SAMPLE = 4096 };
    double d[SAMPLE];
    size_t n = 0, stride = total / SAMPLE + 1, k = 0;
    for (int s = 0; s < t->info.stages; s++)
        for (size_t i = 0; i < t->stage[s].count; i++, k++) {
            const pp_timed_action *a = &t->stage[s].items[i];
            double len = a->end - a->start;
            if (k % stride == 0 && n < SAMPLE && isfinite(len) && len > 0)
                d[n++] = len;
        }
    if (n == 0)
        return 0;
    qsort(d, n, sizeof *d, cmp_double);
    return d[n / 4];
}

static void scan_range(const pp_timeline *t, layout *L, size_t *total)
{
    double lo = INFINITY, hi = -INFINITY;
    *total = 0;
    for (int s = 0; s < t->info.stages; s++)
        for (size_t i = 0; i < t->stage[s].count; i++) {
            const pp_timed_action *a = &t->stage[s].items[i];
            if (isfinite(a->start) && a->start < lo)
                lo = a->start;
            if (isfinite(a->end) && a->end > hi)
                hi = a->end;
            L->has_split |= a->act.op == PP_OP_I || a->act.op == PP_OP_W;
            L->has_opt |= a->act.op == PP_OP_OPT;
            L->has_barrier |= a->act.op == PP_OP_BARRIER;
            (*total)++;
        }
    if (!(lo <= hi)) {
        lo = 0;
        hi = 1;
    }
    /* Simulated runs start at 0; keep the origin unless the run starts late
     * (absolute clock times from a measured run). */
    L->t0 = lo >= 0 && lo <= 0.1 * hi ? 0.0 : lo;
    L->t1 = hi > L->t0 ? hi : L->t0 + 1;
}

static void make_layout(const pp_timeline *t, layout *L)
{
    memset(L, 0, sizeof *L);
    size_t total;
    scan_range(t, L, &total);
    double span = L->t1 - L->t0, typ = typical_duration(t, total);
    double w = typ > 0 ? span / typ * PX_PER_TYPICAL : MIN_PLOT_W;
    L->plot_w = w < MIN_PLOT_W ? MIN_PLOT_W : w > MAX_PLOT_W ? MAX_PLOT_W : w;
    L->scale = L->plot_w / span;
    L->multi = pp_multi_stage(&t->info);
    int P = L->rows = t->info.ranks;
    L->row_h = P <= 16 ? 26.0 : fmax(6.0, 416.0 / P);
    L->row_gap = L->row_h >= 20 ? 6.0 : 2.0;
    L->width = LEFT + L->plot_w + RIGHT;
    L->height = TOP + P * (L->row_h + L->row_gap) + AXIS_H + LEGEND_H;
    L->label_boxes = total <= MAX_LABELLED && L->row_h >= 14;
    double typ_px = typ > 0 ? typ * L->scale : PX_PER_TYPICAL;
    L->outline = typ_px >= 8;
    /* An OPT after every backward must not paint over a dense picture. */
    L->mark_w = fmin(2.5, fmax(0.15, 0.5 * typ_px));
}

static double x_of(const layout *L, double time)
{
    return LEFT + (time - L->t0) * L->scale;
}

static double row_y(const layout *L, int s)
{
    return TOP + s * (L->row_h + L->row_gap);
}

/* A tick step of 1, 2 or 5 times a power of ten giving about 8 ticks. */
static double tick_step(double span)
{
    double raw = span / 8.0, p = pow(10.0, floor(log10(raw)));
    double m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static void title_line(FILE *f, const pp_timeline *t, const layout *L)
{
    const pp_ir_info *in = &t->info;
    fprintf(f, "<text x=\"%.1f\" y=\"24\" font-size=\"15\" font-weight=\"bold\">", LEFT);
    xml_str(f, in->name[0] ? in->name : "schedule");
    fprintf(f, "</text>\n<text x=\"%.1f\" y=\"24\" font-size=\"13\" text-anchor=\"end\" "
               "fill=\"#444\">",
            L->width - RIGHT);
    if (L->multi)
        fprintf(f, "R = %d, V = %d (%s), ", in->ranks, in->stages / in->ranks,
                pp_place_name(in->placement));
    else
        fprintf(f, "P = %d, ", in->stages);
    fprintf(f, "m = %d, steps = %d, ", in->microbatches_per_step, in->steps);
    xml_str(f, t->source);
    fputs("</text>\n", f);
}

static void stage_rows(FILE *f, const layout *L)
{
    for (int s = 0; s < L->rows; s++) {
        double y = row_y(L, s);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"/>\n",
                LEFT, y, L->plot_w, L->row_h, IDLE_FILL);
        fprintf(f, "<text x=\"%.1f\" y=\"%.2f\" font-size=\"%.0f\" text-anchor=\"end\" "
                   "dominant-baseline=\"central\">%s %d</text>\n",
                LEFT - 8, y + L->row_h / 2, fmin(12.0, L->row_h), L->multi ? "rank" : "stage", s);
    }
}

static void time_axis(FILE *f, const pp_timeline *t, const layout *L)
{
    double y = row_y(L, t->info.ranks) - L->row_gap + 4, span = L->t1 - L->t0;
    double step = tick_step(span);
    fprintf(f, "<g stroke=\"#333\" stroke-width=\"1\">\n<line x1=\"%.1f\" y1=\"%.2f\" "
               "x2=\"%.2f\" y2=\"%.2f\"/>\n",
            LEFT, y, LEFT + L->plot_w, y);
    /* Ticks by index, not by repeated addition, so labels do not drift. */
    long first = (long)ceil(L->t0 / step - 1e-9), last = (long)floor(L->t1 / step + 1e-9);
    for (long i = first; i <= last; i++)
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n",
                x_of(L, (double)i * step), y, x_of(L, (double)i * step), y + 5);
    fputs("</g>\n<g font-size=\"11\" text-anchor=\"middle\" fill=\"#333\">\n", f);
    for (long i = first; i <= last; i++)
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\">%g</text>\n", x_of(L, (double)i * step), y + 17,
                (double)i * step);
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\">time (", LEFT + L->plot_w / 2, y + 33);
    xml_str(f, t->unit);
    fputs(")</text>\n</g>\n", f);
}

static const char *shade(int op, int mb)
{
    if (op < 0 || op >= PP_OP_COUNT)
        return "#999999";
    return palette[op][mb >= 0 ? mb % SHADES : 0];
}

/* The fill of an action: by kind and micro-batch, or with several stages
 * per rank by its chunk (stage / R: 0 for a rank's first stage) and kind. */
static const char *fill_of(const pp_timeline *t, const layout *L, const pp_timed_action *a)
{
    int op = a->act.op;
    if (!L->multi || op < 0 || op >= PP_OP_COUNT)
        return shade(op, a->act.mb);
    int hue = (a->act.stage / t->info.ranks) % CHUNK_HUES;
    static const char *const stripes[CHUNK_HUES] = {"url(#w0)", "url(#w1)", "url(#w2)",
                                                    "url(#w3)"};
    return op == PP_OP_W ? stripes[hue] : chunk_palette[hue][op];
}

/* The striped fills of W boxes, one per chunk hue. */
static void stripe_defs(FILE *f)
{
    fputs("<defs>\n", f);
    for (int h = 0; h < CHUNK_HUES; h++)
        fprintf(f, "<pattern id=\"w%d\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
                   "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" "
                   "fill=\"%s\"/><rect width=\"3\" height=\"6\" fill=\"%s\"/></pattern>\n",
                h, chunk_palette[h][PP_OP_F], chunk_palette[h][PP_OP_B]);
    fputs("</defs>\n", f);
}

/* Hover text, e.g. "B3 stage 1 v1 (F v0, drift 1) [4, 6]". */
static void tooltip(FILE *f, const pp_timed_action *a, int s, const int32_t *fv, size_t nfv)
{
    char text[32];
    pp_action_format(a->act, text, sizeof text);
    fputs("<title>", f);
    xml_str(f, text);
    fprintf(f, " stage %d v%d", s, a->version);
    int op = a->act.op, mb = a->act.mb;
    int vf = (op == PP_OP_B || op == PP_OP_I) && mb >= 0 && (size_t)mb < nfv ? fv[mb] : -1;
    if (vf >= 0)
        fprintf(f, " (F v%d, drift %d)", vf, a->version - vf);
    fprintf(f, " [%.6g, %.6g]</title>", a->start, a->end);
}

/* The box of one action; OPT and BARRIER get a narrow mark even at zero
 * duration so they stay visible; the halves of an overlapped pair share
 * the row, the forward on top. */
static void action_box(FILE *f, const pp_timeline *t, const layout *L, const pp_timed_action *a,
                       int s, const int32_t *fv, size_t nfv)
{
    int op = a->act.op;
    double x = x_of(L, isfinite(a->start) ? a->start : L->t0);
    double w = (isfinite(a->end - a->start) ? a->end - a->start : 0) * L->scale;
    double y = row_y(L, pp_stage_rank(&t->info, s)), h = L->row_h;
    if (a->flags & PP_TA_OVERLAP) {
        h /= 2;
        if (op != PP_OP_F)
            y += h;
    }
    if (op == PP_OP_OPT) {
        w = fmax(w, L->mark_w);
        y -= 2;
        h += 4;
    } else if (op == PP_OP_BARRIER) {
        w = fmax(w, 1.2);
        y -= 3;
        h += 6;
    } else {
        w = fmax(w, 0.4);
    }
    fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\">", x, y, w,
            h, fill_of(t, L, a));
    tooltip(f, a, s, fv, nfv);
    fputs("</rect>\n", f);
    if (!L->label_boxes || a->act.mb < 0 || op == PP_OP_OPT || op == PP_OP_BARRIER)
        return;
    char num[16];
    int len = snprintf(num, sizeof num, "%d", a->act.mb);
    if (w < len * 7.0 + 4.0)
        return;
    /* Dark text on the lightest shade (a chunk's forward), white on the others. */
    int light = L->multi ? op == PP_OP_F : a->act.mb % SHADES == SHADES - 1;
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" stroke=\"none\" fill=\"%s\">%s</text>\n", x + w / 2, y + h / 2,
            light ? "#111" : "#fff", num);
}

static int stage_actions(FILE *f, const pp_timeline *t, const layout *L, int s)
{
    int32_t *fv;
    size_t nfv;
    if (pp_timeline_f_versions(t, s, &fv, &nfv) < 0)
        return -1;
    const pp_timed_list *l = &t->stage[s];
    for (size_t i = 0; i < l->count; i++)
        action_box(f, t, L, &l->items[i], s, fv, nfv);
    free(fv);
    return 0;
}

static void legend_item(FILE *f, double *x, double y, const char *fill, double w,
                        const char *label)
{
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"12\" fill=\"%s\"/>\n", *x,
            y - 6, w, fill);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", *x + w + 5, y, label);
    *x += w + 5 + 7.0 * (double)strlen(label) + 18;
}

/* Several stages per rank: a hue per chunk, light forward, dark backward. */
static void chunk_legend(FILE *f, const pp_timeline *t, const layout *L, double *x, double y)
{
    int V = t->info.stages / t->info.ranks;
    for (int v = 0; v < V && v < CHUNK_HUES; v++) {
        char label[48];
        snprintf(label, sizeof label, "chunk %d F", v);
        legend_item(f, x, y, chunk_palette[v][PP_OP_F], 12, label);
        snprintf(label, sizeof label, "B/I");
        legend_item(f, x, y, chunk_palette[v][PP_OP_B], 12, label);
    }
    if (L->has_split)
        legend_item(f, x, y, "url(#w0)", 12, "W striped");
}

static void legend(FILE *f, const pp_timeline *t, const layout *L)
{
    double x = LEFT, y = L->height - LEGEND_H / 2;
    fputs("<g font-size=\"12\" dominant-baseline=\"central\">\n", f);
    if (L->multi) {
        chunk_legend(f, t, L, &x, y);
        legend_item(f, &x, y, palette[PP_OP_OPT][0], 3, "OPT");
        legend_item(f, &x, y, IDLE_FILL, 16, "idle");
        fputs("</g>\n", f);
        return;
    }
    legend_item(f, &x, y, palette[PP_OP_F][0], 16, "F forward");
    legend_item(f, &x, y, palette[PP_OP_B][0], 16, "B backward");
    if (L->has_split) {
        legend_item(f, &x, y, palette[PP_OP_I][0], 16, "I input grad");
        legend_item(f, &x, y, palette[PP_OP_W][0], 16, "W weight grad");
    }
    legend_item(f, &x, y, palette[PP_OP_OPT][0], 3, "OPT optimizer step");
    if (L->has_barrier)
        legend_item(f, &x, y, palette[PP_OP_BARRIER][0], 2, "barrier");
    legend_item(f, &x, y, IDLE_FILL, 16, "idle");
    fputs("</g>\n", f);
}

static int write_svg(FILE *f, const pp_timeline *t)
{
    layout L;
    make_layout(t, &L);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" font-family=\"Helvetica, Arial, sans-serif\">\n",
            L.width, L.height, L.width, L.height);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n");
    if (L.multi)
        stripe_defs(f);
    title_line(f, t, &L);
    stage_rows(f, &L);
    /* Thin white outlines separate neighbouring boxes when they are wide. */
    fprintf(f, "<g stroke=\"#fff\" stroke-width=\"%s\" font-size=\"10\" text-anchor=\"middle\" "
               "dominant-baseline=\"central\">\n",
            L.outline ? "0.6" : "0");
    for (int s = 0; s < t->info.stages; s++)
        if (stage_actions(f, t, &L, s) < 0)
            return -1;
    fputs("</g>\n", f);
    time_axis(f, t, &L);
    legend(f, t, &L);
    fputs("</svg>\n", f);
    return 0;
}

static int save_svg(FILE *f, const void *t, pp_err *e)
{
    return write_svg(f, t) < 0 ? pp_errf(e, "out of memory") : 0;
}

int pp_svg_save(const char *path, const pp_timeline *t, pp_err *e)
{
    return pp_atomic_save(path, save_svg, t, e);
}
