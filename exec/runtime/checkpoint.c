#define _POSIX_C_SOURCE 200809L /* fseeko, fileno, fsync, O_DIRECTORY */

#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const unsigned char MAGIC[8] = {'P', 'P', 'C', 'K', 'P', 'T', '\r', '\n'};
enum { NSHAPE = 6, HEADER_BYTES = 8 + 4 + 4 + 4 * NSHAPE + 4 };

/* ------------------------------------------------------------------ */
/* CRC-32 and little-endian fields.                                    */
/* ------------------------------------------------------------------ */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* Reflected polynomial 0xEDB88320, one table entry per byte value. */
static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t pp_crc32(uint32_t crc, const void *buf, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = buf;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void shape_to_ints(const pp_ckpt_shape *s, int v[NSHAPE])
{
    v[0] = s->layers;
    v[1] = s->dim;
    v[2] = s->heads;
    v[3] = s->seq_len;
    v[4] = s->vocab;
    v[5] = s->stages;
}

static const char *const SHAPE_NAMES[NSHAPE] = {"layers", "dim",   "heads",
                                                "seq_len", "vocab", "stages"};

/* ------------------------------------------------------------------ */
/* Writing.                                                            */
/* ------------------------------------------------------------------ */

/* Remembers the first failure; commit reports it. */
static void put(pp_ckpt_writer *w, const void *buf, size_t n)
{
    if (w->failed || n == 0)
        return;
    errno = 0;
    if (fwrite(buf, 1, n, w->af.f) != n)
        w->failed = errno ? errno : EIO;
}

static void free_names(pp_ckpt_writer *w)
{
    for (int i = 0; i < w->nsections; i++)
        free(w->names[i]);
    free(w->names);
    w->names = NULL;
    w->nsections = w->cap = 0;
}

static int make_dir(const char *dir, pp_err *e)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return pp_errf(e, "%s: cannot create checkpoint directory: %s", dir, strerror(errno));
    return 0;
}

int pp_ckpt_writer_open(pp_ckpt_writer *w, const char *dir, const char *name,
                        const pp_ckpt_shape *shape, pp_err *e)
{
    memset(w, 0, sizeof *w);
    if (!*name || strchr(name, '/'))
        return pp_errf(e, "%s: bad checkpoint name '%s' (empty or with '/')", dir, name);
    char path[sizeof w->af.path];
    if (snprintf(w->dir, sizeof w->dir, "%s", dir) >= (int)sizeof w->dir ||
        snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return pp_errf(e, "%s/%s: path too long", dir, name);
    if (make_dir(dir, e))
        return -1;
    if (pp_atomic_open(&w->af, path, e))
        return -1;
    unsigned char h[HEADER_BYTES];
    int v[NSHAPE];
    shape_to_ints(shape, v);
    memcpy(h, MAGIC, 8);
    put_u32(h + 8, PP_CKPT_VERSION);
    put_u32(h + 12, NSHAPE);
    for (int i = 0; i < NSHAPE; i++)
        put_u32(h + 16 + 4 * i, (uint32_t)v[i]);
    put_u32(h + HEADER_BYTES - 4, pp_crc32(0, h, HEADER_BYTES - 4));
    put(w, h, sizeof h);
    return 0;
}

static int remember_name(pp_ckpt_writer *w, const char *section, pp_err *e)
{
    for (int i = 0; i < w->nsections; i++)
        if (strcmp(w->names[i], section) == 0)
            return pp_errf(e, "%s: section '%s' written twice", w->af.path, section);
    if (w->nsections == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        char **names = realloc(w->names, (size_t)cap * sizeof *names);
        if (!names)
            return pp_errf(e, "%s: out of memory", w->af.path);
        w->names = names;
        w->cap = cap;
    }
    size_t len = strlen(section);
    w->names[w->nsections] = malloc(len + 1);
    if (!w->names[w->nsections])
        return pp_errf(e, "%s: out of memory", w->af.path);
    memcpy(w->names[w->nsections++], section, len + 1);
    return 0;
}

int pp_ckpt_writer_add(pp_ckpt_writer *w, const char *section, const void *data, size_t bytes,
                       pp_err *e)
{
    size_t len = strlen(section);
    if (len == 0 || len > PP_CKPT_NAME_MAX)
        return pp_errf(e, "%s: section name '%s' must have 1 to %d characters", w->af.path,
                       section, PP_CKPT_NAME_MAX);
    if (remember_name(w, section, e))
        return -1;
    unsigned char h[4 + PP_CKPT_NAME_MAX + 8 + 4 + 4];
    put_u32(h, (uint32_t)len);
    memcpy(h + 4, section, len);
    put_u64(h + 4 + len, bytes);
    put_u32(h + 12 + len, pp_crc32(0, data, bytes));
    put_u32(h + 16 + len, pp_crc32(0, h, 16 + len));
    put(w, h, 20 + len);
    put(w, data, bytes);
    if (w->failed)
        return pp_errf(e, "%s: write failed: %s", w->af.tmp, strerror(w->failed));
    return 0;
}

/* Makes the rename itself durable: without this a crash can forget it. */
static int sync_dir(const char *dir, pp_err *e)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return pp_errf(e, "%s: cannot open directory to sync: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    /* Some file systems cannot sync directories; the data itself is synced. */
    if (rc != 0 && err != EINVAL && err != ENOTSUP)
        return pp_errf(e, "%s: cannot sync directory: %s", dir, strerror(err));
    return 0;
}

int pp_ckpt_writer_commit(pp_ckpt_writer *w, pp_err *e)
{
    unsigned char end[12];
    put_u32(end, 0);
    put_u32(end + 4, (uint32_t)w->nsections);
    put_u32(end + 8, pp_crc32(0, end, 8));
    put(w, end, sizeof end);
    free_names(w);
    if (w->failed) {
        int err = w->failed;
        pp_atomic_abort(&w->af);
        return pp_errf(e, "%s: write failed: %s", w->af.path, strerror(err));
    }
    if (pp_atomic_commit(&w->af, e))
        return -1;
    return sync_dir(w->dir, e);
}

void pp_ckpt_writer_abort(pp_ckpt_writer *w)
{
    free_names(w);
    pp_atomic_abort(&w->af);
}

/* ------------------------------------------------------------------ */
/* Reading.                                                            */
/* ------------------------------------------------------------------ */

static int read_exact(pp_ckpt_reader *r, void *buf, size_t n, pp_err *e)
{
    if (fread(buf, 1, n, r->f) == n)
        return 0;
    if (ferror(r->f))
        return pp_errf(e, "%s: read failed: %s", r->path, strerror(errno));
    return pp_errf(e, "%s: truncated checkpoint (ends at byte %lld)", r->path,
                   (long long)ftello(r->f));
}

static int read_header(pp_ckpt_reader *r, pp_err *e)
{
    unsigned char h[HEADER_BYTES];
    if (read_exact(r, h, 16, e))
        return -1;
    if (memcmp(h, MAGIC, 8) != 0)
        return pp_errf(e, "%s: not a ppsched checkpoint (bad magic)", r->path);
    r->version = (int)get_u32(h + 8);
    if (r->version != PP_CKPT_VERSION)
        return pp_errf(e, "%s: checkpoint version %u, this build reads version %d", r->path,
                       get_u32(h + 8), PP_CKPT_VERSION);
    if (get_u32(h + 12) != NSHAPE)
        return pp_errf(e, "%s: corrupted header (%u shape fields, expected %d)", r->path,
                       get_u32(h + 12), NSHAPE);
    if (read_exact(r, h + 16, HEADER_BYTES - 16, e))
        return -1;
    if (get_u32(h + HEADER_BYTES - 4) != pp_crc32(0, h, HEADER_BYTES - 4))
        return pp_errf(e, "%s: corrupted header (CRC mismatch)", r->path);
    int v[NSHAPE];
    for (int i = 0; i < NSHAPE; i++)
        v[i] = (int)get_u32(h + 16 + 4 * i);
    pp_ckpt_shape s = {v[0], v[1], v[2], v[3], v[4], v[5]};
    r->shape = s;
    return 0;
}

/* A pipeline's checkpoint has a section per stage and a few more; the cap
 * keeps the duplicate check below (quadratic) well under a second. */
#define MAX_SECTIONS 8192

static int add_section(pp_ckpt_reader *r, const pp_ckpt_section *s, int *cap, pp_err *e)
{
    if (r->nsections >= MAX_SECTIONS)
        return pp_errf(e, "%s: more than %d sections: not a checkpoint of this program", r->path,
                       MAX_SECTIONS);
    if (pp_ckpt_find(r, s->name))
        return pp_errf(e, "%s: section '%s' appears twice", r->path, s->name);
    if (r->nsections == *cap) {
        int ncap = *cap ? 2 * *cap : 16;
        pp_ckpt_section *a = realloc(r->sections, (size_t)ncap * sizeof *a);
        if (!a)
            return pp_errf(e, "%s: out of memory", r->path);
        r->sections = a;
        *cap = ncap;
    }
    r->sections[r->nsections++] = *s;
    return 0;
}

/* Reads one section header (name_len already read) and skips its data. */
static int read_section(pp_ckpt_reader *r, uint32_t len, uint64_t size, int *cap, pp_err *e)
{
    unsigned char h[4 + PP_CKPT_NAME_MAX + 8 + 4 + 4];
    if (len > PP_CKPT_NAME_MAX)
        return pp_errf(e, "%s: corrupted section header (name of %u bytes)", r->path, len);
    put_u32(h, len);
    if (read_exact(r, h + 4, len + 16, e))
        return -1;
    if (get_u32(h + 16 + len) != pp_crc32(0, h, 16 + len))
        return pp_errf(e, "%s: corrupted section header (CRC mismatch) after %d sections",
                       r->path, r->nsections);
    pp_ckpt_section s;
    memcpy(s.name, h + 4, len);
    s.name[len] = '\0';
    s.bytes = get_u64(h + 4 + len);
    s.crc = get_u32(h + 12 + len);
    s.offset = (uint64_t)ftello(r->f);
    if (s.bytes > size - s.offset)
        return pp_errf(e, "%s: truncated checkpoint (section '%s' needs %llu bytes, %llu left)",
                       r->path, s.name, (unsigned long long)s.bytes,
                       (unsigned long long)(size - s.offset));
    if (fseeko(r->f, (off_t)(s.offset + s.bytes), SEEK_SET) != 0)
        return pp_errf(e, "%s: seek failed: %s", r->path, strerror(errno));
    return add_section(r, &s, cap, e);
}

static int read_end(pp_ckpt_reader *r, uint64_t size, pp_err *e)
{
    unsigned char end[12];
    put_u32(end, 0);
    if (read_exact(r, end + 4, 8, e))
        return -1;
    if (get_u32(end + 8) != pp_crc32(0, end, 8))
        return pp_errf(e, "%s: corrupted end record (CRC mismatch)", r->path);
    if (get_u32(end + 4) != (uint32_t)r->nsections)
        return pp_errf(e, "%s: end record counts %u sections, found %d", r->path,
                       get_u32(end + 4), r->nsections);
    if ((uint64_t)ftello(r->f) != size)
        return pp_errf(e, "%s: %llu stray bytes after the end record", r->path,
                       (unsigned long long)(size - (uint64_t)ftello(r->f)));
    return 0;
}

static int read_index(pp_ckpt_reader *r, uint64_t size, pp_err *e)
{
    int cap = 0;
    for (;;) {
        unsigned char b[4];
        if (read_exact(r, b, 4, e))
            return -1;
        uint32_t len = get_u32(b);
        if (len == 0)
            return read_end(r, size, e);
        if (read_section(r, len, size, &cap, e))
            return -1;
    }
}

int pp_ckpt_open(pp_ckpt_reader *r, const char *dir, const char *name, pp_err *e)
{
    memset(r, 0, sizeof *r);
    if (snprintf(r->path, sizeof r->path, "%s/%s", dir, name) >= (int)sizeof r->path)
        return pp_errf(e, "%s/%s: path too long", dir, name);
    r->f = fopen(r->path, "rb");
    if (!r->f)
        return pp_errf(e, "%s: cannot open checkpoint: %s", r->path, strerror(errno));
    struct stat st;
    if (fstat(fileno(r->f), &st) != 0 || !S_ISREG(st.st_mode)) {
        pp_errf(e, "%s: not a regular file", r->path);
        pp_ckpt_close(r);
        return -1;
    }
    if (read_header(r, e) || read_index(r, (uint64_t)st.st_size, e)) {
        pp_ckpt_close(r);
        return -1;
    }
    return 0;
}

void pp_ckpt_close(pp_ckpt_reader *r)
{
    if (r->f)
        fclose(r->f);
    free(r->sections);
    memset(r, 0, sizeof *r);
}

int pp_ckpt_check_shape(const pp_ckpt_reader *r, const pp_ckpt_shape *want, pp_err *e)
{
    int have[NSHAPE], need[NSHAPE];
    shape_to_ints(&r->shape, have);
    shape_to_ints(want, need);
    for (int i = 0; i < NSHAPE; i++)
        if (have[i] != need[i])
            return pp_errf(e, "%s: checkpoint is for %s %d, model has %s %d", r->path,
                           SHAPE_NAMES[i], have[i], SHAPE_NAMES[i], need[i]);
    return 0;
}

const pp_ckpt_section *pp_ckpt_find(const pp_ckpt_reader *r, const char *name)
{
    for (int i = 0; i < r->nsections; i++)
        if (strcmp(r->sections[i].name, name) == 0)
            return &r->sections[i];
    return NULL;
}

static const pp_ckpt_section *need_section(const pp_ckpt_reader *r, const char *name,
                                           pp_err *e)
{
    const pp_ckpt_section *s = pp_ckpt_find(r, name);
    if (!s)
        pp_errf(e, "%s: no section '%s'", r->path, name);
    return s;
}

static int read_data(pp_ckpt_reader *r, const pp_ckpt_section *s, void *dst, pp_err *e)
{
    if (fseeko(r->f, (off_t)s->offset, SEEK_SET) != 0)
        return pp_errf(e, "%s: seek failed: %s", r->path, strerror(errno));
    if (read_exact(r, dst, (size_t)s->bytes, e))
        return -1;
    if (pp_crc32(0, dst, (size_t)s->bytes) != s->crc)
        return pp_errf(e, "%s: section '%s' is corrupted (CRC mismatch)", r->path, s->name);
    return 0;
}

int pp_ckpt_read(pp_ckpt_reader *r, const char *name, void *dst, size_t bytes, pp_err *e)
{
    const pp_ckpt_section *s = need_section(r, name, e);
    if (!s)
        return -1;
    if (s->bytes != bytes)
        return pp_errf(e, "%s: section '%s' has %llu bytes, expected %zu", r->path, name,
                       (unsigned long long)s->bytes, bytes);
    return read_data(r, s, dst, e);
}

int pp_ckpt_read_alloc(pp_ckpt_reader *r, const char *name, void **out, size_t *bytes,
                       pp_err *e)
{
    const pp_ckpt_section *s = need_section(r, name, e);
    if (!s)
        return -1;
    if (s->bytes >= SIZE_MAX)
        return pp_errf(e, "%s: section '%s' is too large", r->path, name);
    char *buf = malloc((size_t)s->bytes + 1);
    if (!buf)
        return pp_errf(e, "%s: out of memory for section '%s'", r->path, name);
    if (read_data(r, s, buf, e)) {
        free(buf);
        return -1;
    }
    buf[s->bytes] = '\0';
    *out = buf;
    *bytes = (size_t)s->bytes;
    return 0;
}

/* Streams one section through the CRC in chunks (sections may be GBs). */
static int verify_section(pp_ckpt_reader *r, const pp_ckpt_section *s, unsigned char *buf,
                          size_t chunk, pp_err *e)
{
    if (fseeko(r->f, (off_t)s->offset, SEEK_SET) != 0)
        return pp_errf(e, "%s: seek failed: %s", r->path, strerror(errno));
    uint32_t crc = 0;
    for (uint64_t left = s->bytes; left > 0;) {
        size_t n = left < chunk ? (size_t)left : chunk;
        if (read_exact(r, buf, n, e))
            return -1;
        crc = pp_crc32(crc, buf, n);
        left -= n;
    }
    if (crc != s->crc)
        return pp_errf(e, "%s: section '%s' is corrupted (CRC mismatch)", r->path, s->name);
    return 0;
}

int pp_ckpt_verify(pp_ckpt_reader *r, pp_err *e)
{
    const size_t chunk = (size_t)1 << 20;
    unsigned char *buf = malloc(chunk);
    if (!buf)
        return pp_errf(e, "%s: out of memory", r->path);
    int rc = 0;
    for (int i = 0; i < r->nsections && rc == 0; i++)
        rc = verify_section(r, &r->sections[i], buf, chunk, e);
    free(buf);
    return rc;
}
