/* Looped BFS (Lamy-Poirier 2023, "Breadth-First Pipeline Parallelism";
 * PyTorch's ScheduleLoopedBFS): V chunks per rank, stage s on rank s mod R.
 * Each rank runs the forwards of all m micro-batches on its lowest chunk,
 * then on the next, ...; then the backwards chunk by chunk from the highest,
 * micro-batches from the last to the first (PyTorch's order). */
#include "step_order.h"

int pp_gen_looped_bfs(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    int R = o->stages, m = o->microbatches, V = o->chunks ? o->chunks : 2;
    pp_ir_info info;
    pp_step_builder b;
    if (pp_gen_multi_info("looped-bfs", o, V, PP_PLACE_LOOPED, &info, e) < 0 ||
        pp_step_builder_init(&b, &info, e) < 0)
        return -1;
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < V; c++)
            for (int mb = 0; mb < m; mb++)
                pp_step_add(&b, PP_OP_F, c * R + r, mb);
        for (int c = V - 1; c >= 0; c--)
            for (int mb = m - 1; mb >= 0; mb--)
                pp_step_add(&b, PP_OP_B, c * R + r, mb);
    }
    return pp_step_open(&b, out, e);
}
