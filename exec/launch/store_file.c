/* The rendezvous through a directory every rank sees (file:DIR, e.g. on a
 * cluster's shared filesystem). Each collective call has a sequence
 * number; its files appear atomically (written under a temporary name,
 * then renamed) and readers poll for them:
 *   DIR/<seq>.b        rank 0's broadcast
 *   DIR/<seq>.g<rank>  one rank's part of a gather
 * Closing is one more gather, so rank 0 knows everyone has read
 * everything before it removes the files. A directory left by a crashed
 * run would be read as this run's: use a fresh one per job. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "net.h"
#include "store_impl.h"

typedef struct {
    char dir[4096];
    long seq;
} file_store;

static void path_of(const file_store *f, char *buf, size_t n, long seq, int rank)
{
    if (rank < 0)
        snprintf(buf, n, "%s/%ld.b", f->dir, seq);
    else
        snprintf(buf, n, "%s/%ld.g%d", f->dir, seq, rank);
}

static int put(const char *path, const void *buf, size_t n, pp_err *e)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* only this user may read it: a broadcast may carry the job secret */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!fp && fd >= 0)
        close(fd);
    if (!fp)
        return pp_errf(e, "rendezvous: cannot write %s: %s", tmp, strerror(errno));
    int ok = fwrite(buf, 1, n, fp) == n;
    ok = (fflush(fp) == 0) & ok;
    ok = (fsync(fileno(fp)) == 0) & ok;
    ok = (fclose(fp) == 0) & ok;
    if (!ok || rename(tmp, path) < 0) {
        unlink(tmp);
        return pp_errf(e, "rendezvous: cannot write %s: %s", path, strerror(errno));
    }
    return 0;
}

/* Waits for path to appear, then reads it whole into a malloc'd buffer. */
static int take(const pp_store *st, const char *path, int from, void **buf, size_t *n,
                pp_err *e)
{
    double deadline = pp_net_now() + st->timeout_s;
    FILE *fp;
    while (!(fp = fopen(path, "rb"))) {
        if (errno != ENOENT)
            return pp_errf(e, "rendezvous: cannot read %s: %s", path, strerror(errno));
        if (pp_net_now() > deadline)
            return pp_errf(e, "rendezvous: rank %d wrote nothing after %.0f s (no %s)", from,
                           st->timeout_s, path);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    struct stat sb;
    void *b = NULL;
    int rc = fstat(fileno(fp), &sb) == 0 ? 0 : pp_errf(e, "rendezvous: %s", strerror(errno));
    if (rc == 0 && !(b = malloc(sb.st_size ? (size_t)sb.st_size : 1)))
        rc = pp_errf(e, "out of memory");
    if (rc == 0 && fread(b, 1, (size_t)sb.st_size, fp) != (size_t)sb.st_size)
        rc = pp_errf(e, "rendezvous: cannot read %s", path);
    fclose(fp);
    if (rc < 0) {
        free(b);
        return -1;
    }
    *buf = b;
    *n = (size_t)sb.st_size;
    return 0;
}

static int file_bcast(pp_store *st, void *buf, size_t n, pp_err *e)
{
    file_store *f = st->impl;
    char path[4200];
    path_of(f, path, sizeof path, f->seq++, -1);
    if (st->rank == 0)
        return put(path, buf, n, e);
    void *got;
    size_t len;
    if (take(st, path, 0, &got, &len, e) < 0)
        return -1;
    int rc = len == n ? 0 : pp_errf(e, "rendezvous: %s has %zu bytes, expected %zu", path, len, n);
    if (rc == 0)
        memcpy(buf, got, n);
    free(got);
    return rc;
}

static int file_gather(pp_store *st, const void *mine, size_t n, void **all, size_t *sizes,
                       pp_err *e)
{
    file_store *f = st->impl;
    long seq = f->seq++;
    char path[4200];
    if (st->rank != 0) {
        path_of(f, path, sizeof path, seq, st->rank);
        return put(path, mine, n, e);
    }
    if (!(all[0] = malloc(n ? n : 1)))
        return pp_errf(e, "out of memory");
    memcpy(all[0], mine, n);
    sizes[0] = n;
    for (int r = 1; r < st->world; r++) {
        path_of(f, path, sizeof path, seq, r);
        if (take(st, path, r, &all[r], &sizes[r], e) < 0)
            return -1;
    }
    return 0;
}

static void remove_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[4400];
    while (d && (de = readdir(d))) {
        const char *dot = strchr(de->d_name, '.');
        if (!dot || (strncmp(dot, ".b", 2) && strncmp(dot, ".g", 2)))
            continue; /* only what this store writes */
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(dir); /* fails, harmlessly, if something else lives there */
}

static void file_close(pp_store *st)
{
    file_store *f = st->impl;
    void **all = NULL;
    size_t *sizes = NULL;
    pp_err e;
    unsigned char done = 1;
    if (st->rank == 0) {
        all = calloc((size_t)st->world, sizeof *all);
        sizes = calloc((size_t)st->world, sizeof *sizes);
    }
    /* everyone has read everything once rank 0 sees their last word */
    int ok = st->world == 1 || (all && sizes && file_gather(st, &done, 1, all, sizes, &e) == 0);
    if (st->world > 1 && st->rank != 0)
        ok = file_gather(st, &done, 1, NULL, NULL, &e) == 0;
    if (st->rank == 0 && ok)
        remove_files(f->dir);
    for (int r = 0; all && r < st->world; r++)
        free(all[r]);
    free(all);
    free(sizes);
    free(f);
}

static const pp_store_ops file_ops = {file_bcast, file_gather, file_close, NULL};

static int mkdirs(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0777) < 0 && errno != EEXIST)
                return -1;
            *s = '/';
        }
    return mkdir(p, 0777) < 0 && errno != EEXIST ? -1 : 0;
}

int pp_store_file_open(pp_store *st, const char *dir, pp_err *e)
{
    if (strlen(dir) >= 4000)
        return pp_errf(e, "--rendezvous file:DIR: path too long");
    if (mkdirs(dir) < 0)
        return pp_errf(e, "--rendezvous file:%s: cannot create the directory: %s", dir,
                       strerror(errno));
    file_store *f = calloc(1, sizeof *f);
    if (!f)
        return pp_errf(e, "out of memory");
    snprintf(f->dir, sizeof f->dir, "%s", dir);
    st->impl = f;
    st->ops = &file_ops;
    return 0;
}
