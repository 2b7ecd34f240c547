#include "placement.h"

#include <stdlib.h>

int pp_placement_plan(const char *devices, int P, int local_rank, int partition,
                      pp_placement **out, pp_err *e)
{
    int devs[256], k = 0;
    const char *p = devices;
    *out = NULL;
    while (p && *p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1023 || (*end && *end != ',') || k == 256 ||
            (*end == ',' && !end[1]))
            return pp_errf(e, "--devices \"%s\": expected GPU ids like 0 or 0,1,2,3", devices);
        devs[k++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (devices && !k)
        return pp_errf(e, "--devices: empty list");
    pp_placement *pl = calloc((size_t)P, sizeof *pl);
    if (!pl)
        return pp_errf(e, "out of memory");
    for (int s = 0; s < P; s++) {
        pl[s].partition = -1;
        if (local_rank >= 0)
            pl[s].device = k ? devs[local_rank % k] : local_rank;
        else
            pl[s].device = k ? devs[(long)s * k / P] : 0;
    }
    for (int s = 0; partition && local_rank < 0 && s < P; s++) {
        int before = 0, sharing = 0;
        for (int t = 0; t < P; t++)
            if (pl[t].device == pl[s].device) {
                sharing++;
                before += t < s;
            }
        if (sharing > 1) {
            pl[s].partition = before;
            pl[s].partitions = sharing;
        }
    }
    *out = pl;
    return 0;
}
