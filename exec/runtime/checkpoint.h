/* Checkpoint files (DESIGN §6): a header naming the model shape, then named
 * sections of raw bytes ("stage0.weights", "stage0.adam_m", "runtime.json",
 * ...), each with a CRC32 so a corrupted file is caught before it is used.
 *
 * Layout, all integers little-endian:
 *   header   "PPCKPT\r\n"  u32 version  u32 nshape  i32 shape[nshape]  u32 crc
 *   section  u32 name_len (1..PP_CKPT_NAME_MAX)  name  u64 bytes  u32 data_crc
 *            u32 crc (of the section header fields before it)  data[bytes]
 *   end      u32 0  u32 nsections  u32 crc (of these two)
 * and nothing after the end record. The writer streams sections into a
 * temp file and renames it over the old checkpoint only on commit, so a
 * crash half-way leaves the previous checkpoint as it was. */
#ifndef PP_CHECKPOINT_H
#define PP_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "atomic_file.h"
#include "error.h"

#define PP_CKPT_VERSION 1
#define PP_CKPT_NAME_MAX 127

/* The model a checkpoint belongs to; resuming checks every field. */
typedef struct {
    int layers, dim, heads, seq_len, vocab, stages;
} pp_ckpt_shape;

/* CRC-32 (IEEE, as zlib): start with crc = 0. */
uint32_t pp_crc32(uint32_t crc, const void *buf, size_t n);

/* ------------------------------------------------------------------ */
/* Writing.                                                            */
/* ------------------------------------------------------------------ */

typedef struct {
    pp_atomic_file af;
    char dir[4096];
    char **names;   /* sections written so far (duplicates are refused) */
    int nsections, cap;
    int failed;     /* a write failed; commit refuses */
} pp_ckpt_writer;

/* Starts dir/name (creating dir itself if missing, not its parents). On
 * failure there is nothing to abort. */
int pp_ckpt_writer_open(pp_ckpt_writer *w, const char *dir, const char *name,
                        const pp_ckpt_shape *shape, pp_err *e);
/* Appends a section; data is copied to the file before this returns. */
int pp_ckpt_writer_add(pp_ckpt_writer *w, const char *section, const void *data, size_t bytes,
                       pp_err *e);
/* Writes the end record, fsyncs, renames over dir/name, fsyncs dir. On
 * failure the temp file is removed and the old checkpoint stays. Frees w
 * either way. */
int pp_ckpt_writer_commit(pp_ckpt_writer *w, pp_err *e);
/* Discards everything written so far; the old checkpoint stays. */
void pp_ckpt_writer_abort(pp_ckpt_writer *w);

/* ------------------------------------------------------------------ */
/* Reading.                                                            */
/* ------------------------------------------------------------------ */

typedef struct {
    char name[PP_CKPT_NAME_MAX + 1];
    uint64_t offset; /* of the data in the file */
    uint64_t bytes;
    uint32_t crc;
} pp_ckpt_section;

typedef struct {
    FILE *f;
    char path[4096 + 256];
    int version;
    pp_ckpt_shape shape;
    pp_ckpt_section *sections;
    int nsections;
} pp_ckpt_reader;

/* Opens dir/name and checks its structure (header, section headers, end
 * record, file size). Section data is checked when read. */
int pp_ckpt_open(pp_ckpt_reader *r, const char *dir, const char *name, pp_err *e);
void pp_ckpt_close(pp_ckpt_reader *r);

/* Fails naming the first field that differs, e.g.
 * "ckpt/last.ckpt: checkpoint is for dim 128, model has dim 64". */
int pp_ckpt_check_shape(const pp_ckpt_reader *r, const pp_ckpt_shape *want, pp_err *e);

/* NULL when there is no such section. */
const pp_ckpt_section *pp_ckpt_find(const pp_ckpt_reader *r, const char *name);

/* Reads a section of exactly `bytes` bytes into dst and checks its CRC. */
int pp_ckpt_read(pp_ckpt_reader *r, const char *name, void *dst, size_t bytes, pp_err *e);
/* Reads a section of any size into a fresh buffer (with a NUL after it, so
 * text sections can be parsed as strings); the caller frees *out. */
int pp_ckpt_read_alloc(pp_ckpt_reader *r, const char *name, void **out, size_t *bytes,
                       pp_err *e);
/* Checks the CRC of every section. */
int pp_ckpt_verify(pp_ckpt_reader *r, pp_err *e);

#endif
