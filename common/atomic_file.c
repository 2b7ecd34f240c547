#include "atomic_file.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int pp_atomic_open(pp_atomic_file *af, const char *path, pp_err *e)
{
    memset(af, 0, sizeof *af);
    if (strlen(path) >= sizeof af->path)
        return pp_errf(e, "%s: path too long", path);
    snprintf(af->path, sizeof af->path, "%s", path);
    snprintf(af->tmp, sizeof af->tmp, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp, "wb");
    if (!af->f)
        return pp_errf(e, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

int pp_atomic_commit(pp_atomic_file *af, pp_err *e)
{
    int bad = ferror(af->f);
    bad |= fflush(af->f) != 0;
    bad |= fsync(fileno(af->f)) != 0;
    int saved = errno;
    bad |= fclose(af->f) != 0;
    af->f = NULL;
    if (bad) {
        remove(af->tmp);
        return pp_errf(e, "%s: write failed: %s", af->path, strerror(saved ? saved : errno));
    }
    if (rename(af->tmp, af->path) != 0) {
        saved = errno;
        remove(af->tmp);
        return pp_errf(e, "%s: cannot rename into place: %s", af->path, strerror(saved));
    }
    return 0;
}

void pp_atomic_abort(pp_atomic_file *af)
{
    if (af->f)
        fclose(af->f);
    af->f = NULL;
    remove(af->tmp);
}

int pp_atomic_save(const char *path, pp_atomic_writer write, const void *obj, pp_err *e)
{
    pp_atomic_file af;
    if (pp_atomic_open(&af, path, e) < 0)
        return -1;
    if (write(af.f, obj, e) < 0) {
        pp_atomic_abort(&af);
        return pp_err_prefix(e, "%s", path);
    }
    return pp_atomic_commit(&af, e);
}
