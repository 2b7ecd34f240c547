#include "model.h"

#include <stdio.h>
#include <string.h>

#include "optim_cost.h"

typedef struct {
    const char *name;
    int layers, dim, heads, seq_len, vocab, micro_batch, bytes;
} preset;

/* GPT-2 sizes (untied output layer as in the PACI experiments); tiny is the
 * CPU test model over the 65-symbol tinyshakespeare character vocabulary. */
static const preset presets[] = {
    {"tiny", 8, 64, 4, 64, 65, 8, 4},
    {"gpt2-small", 12, 768, 12, 1024, 50257, 4, 2},
    {"gpt2-medium", 24, 1024, 16, 1024, 50257, 4, 2},
    {"gpt2-large", 36, 1280, 20, 1024, 50257, 4, 2},
    {"gpt2-xl", 48, 1600, 25, 1024, 50257, 4, 2},
};

const char *pp_model_preset_names(void)
{
    return "tiny, gpt2-small, gpt2-medium, gpt2-large, gpt2-xl";
}

int pp_model_preset(const char *name, pp_model_desc *out, pp_err *e)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        const preset *p = &presets[i];
        if (strcmp(p->name, name) != 0)
            continue;
        memset(out, 0, sizeof *out);
        snprintf(out->name, sizeof out->name, "%s", p->name);
        out->layers = p->layers;
        out->dim = p->dim;
        out->heads = p->heads;
        out->seq_len = p->seq_len;
        out->vocab = p->vocab;
        out->micro_batch = p->micro_batch;
        out->bytes_per_elem = p->bytes;
        return 0;
    }
    return pp_errf(e, "unknown model \"%s\" (known: %s)", name, pp_model_preset_names());
}

int pp_model_check(const pp_model_desc *m, int stages, pp_err *e)
{
    if (m->layers < 1 || m->dim < 1 || m->heads < 1 || m->seq_len < 1 ||
        m->vocab < 1 || m->micro_batch < 1)
        return pp_errf(e, "model sizes must be positive (layers %d, dim %d, heads %d, "
                          "seq-len %d, vocab %d, micro-batch-size %d)",
                       m->layers, m->dim, m->heads, m->seq_len, m->vocab, m->micro_batch);
    if (m->dim % m->heads != 0)
        return pp_errf(e, "dim %d is not divisible by heads %d", m->dim, m->heads);
    if (m->bytes_per_elem != 2 && m->bytes_per_elem != 4)
        return pp_errf(e, "precision must be bf16 (2 bytes) or fp32 (4 bytes)");
    if (stages > m->layers)
        return pp_errf(e, "%d stages but the model has only %d layers (every stage needs "
                          "at least one block)", stages, m->layers);
    return 0;
}

void pp_model_stage_blocks(const pp_model_desc *m, int P, int s, int *first_block,
                           int *nblocks)
{
    int base = m->layers / P, extra = m->layers % P;
    *nblocks = base + (s < extra ? 1 : 0);
    *first_block = s * base + (s < extra ? s : extra);
}

/* One block: ln1 (2h), qkv (3h^2+3h), attention projection (h^2+h), ln2
 * (2h), MLP fc (4h^2+4h) and projection (4h^2+h). */
static double block_params(double h)
{
    return 12.0 * h * h + 13.0 * h;
}

double pp_model_stage_params(const pp_model_desc *m, int P, int s)
{
    int first, n;
    pp_model_stage_blocks(m, P, s, &first, &n);
    double h = m->dim, p = n * block_params(h);
    if (s == 0)
        p += (double)m->vocab * h + (double)m->seq_len * h;
    if (s == P - 1)
        p += 2.0 * h + (double)m->vocab * h;
    return p;
}

double pp_model_total_params(const pp_model_desc *m)
{
    return pp_model_stage_params(m, 1, 0);
}

double pp_model_forward_flops(const pp_model_desc *m, int P, int s)
{
    int first, n;
    pp_model_stage_blocks(m, P, s, &first, &n);
    double t = pp_model_tokens_per_mb(m), h = m->dim;
    double f = n * (24.0 * t * h * h + 4.0 * t * m->seq_len * h);
    if (s == P - 1)
        f += 2.0 * t * m->vocab * h;
    return f;
}

double pp_model_boundary_bytes(const pp_model_desc *m)
{
    return (double)m->micro_batch * m->seq_len * m->dim * m->bytes_per_elem;
}

pp_stage_memory pp_model_stage_memory(const pp_model_desc *m, int P, int s)
{
    pp_stage_memory r;
    int first, n;
    pp_model_stage_blocks(m, P, s, &first, &n);
    double params = pp_model_stage_params(m, P, s);
    double sbh = (double)m->seq_len * m->micro_batch * m->dim;
    double scale = m->bytes_per_elem / 2.0;

    r.weights = params * m->bytes_per_elem;
    r.grads = params * 4.0;
    r.optimizer = pp_optim_state_bytes(m, P, s);
    /* Activations of a transformer block without recomputation, per
     * Korthikanti et al. (16-bit): s*b*h*(34 + 5*a*s/h) bytes. */
    double per_block = sbh * (34.0 + 5.0 * m->heads * (double)m->seq_len / m->dim) * scale;
    r.activation_per_mb = n * per_block;
    r.input_per_mb = sbh * m->bytes_per_elem;
    if (s == 0) {
        r.activation_per_mb += sbh * m->bytes_per_elem;
        r.input_per_mb = (double)m->seq_len * m->micro_batch * 4.0; /* token ids */
    }
    if (s == P - 1) /* final LayerNorm input and fp32 logits for the loss */
        r.activation_per_mb += sbh * m->bytes_per_elem +
                               (double)m->seq_len * m->micro_batch * m->vocab * 4.0;
    return r;
}
