/* Kernels of the training step that torch runs in many small passes.
 *
 * Plain C with no Python or torch headers, on tensors' data pointers: built by
 * streamrec/native/__init__.py with the system compiler and called through
 * ctypes. Each function replaces torch code that stays as the fallback and as
 * the reference the tests compare with (named at each function). Inputs are
 * trusted: the trainer built them (indices in range, tables under their load
 * factor).
 *
 * fm_head_*: an FM's per-field part, forward and backward, one pass over the
 * rows each way: trainer.model.CTRModel without hidden layers. Rows are laid
 * out fields first, [F, B, D+1] with any field and example strides and unit
 * column stride; the last column is the first-order weight, the others the
 * factors. `extra` ([B, D], contiguous; has_extra says whether there is one)
 * is one more field's factors without a first-order weight; `weight`
 * ([F (+1 with extra), D], contiguous) the linear layer over all factors.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

void fm_head_forward(const float *rows, int64_t n_fields, int64_t batch, int64_t dim,
                     int64_t field_stride, int64_t example_stride, int64_t has_extra,
                     const float *extra, const float *weight, float *out, float *sums) {
    for (int64_t b = 0; b < batch; ++b) {
        float *s = sums + b * dim;
        double squares = 0.0, linear = 0.0;
        if (has_extra) {
            const float *e = extra + b * dim;
            const float *w = weight + n_fields * dim;
            for (int64_t k = 0; k < dim; ++k) {
                s[k] = e[k];
                squares += (double)e[k] * e[k];
                linear += (double)w[k] * e[k];
            }
        } else {
            memset(s, 0, sizeof(float) * dim);
        }
        for (int64_t f = 0; f < n_fields; ++f) {
            const float *r = rows + f * field_stride + b * example_stride;
            const float *w = weight + f * dim;
            float sq = 0.f, lin = 0.f;
            for (int64_t k = 0; k < dim; ++k) {
                s[k] += r[k];
                sq += r[k] * r[k];
                lin += w[k] * r[k];
            }
            squares += sq;
            linear += lin + r[dim];
        }
        double total = 0.0;
        for (int64_t k = 0; k < dim; ++k) total += (double)s[k] * s[k];
        out[b] = (float)(linear + 0.5 * (total - squares));
    }
}

/* grad_rows: [F, B, D+1] contiguous (written); grad_extra: [B, D] (written, if
 * has_extra); grad_weight: [F (+1 if has_extra), D] (written). An empty tensor's
 * data pointer may be NULL: whether there is an extra field is has_extra's to say. */
void fm_head_backward(const float *rows, int64_t n_fields, int64_t batch, int64_t dim,
                      int64_t field_stride, int64_t example_stride, int64_t has_extra,
                      const float *extra, const float *weight, const float *sums,
                      const float *grad, float *grad_rows, float *grad_extra,
                      float *grad_weight) {
    const int64_t n_weights = (n_fields + (has_extra ? 1 : 0)) * dim;
    if (n_weights > 0) memset(grad_weight, 0, sizeof(float) * n_weights);
    for (int64_t b = 0; b < batch; ++b) {
        const float g = grad[b];
        const float *s = sums + b * dim;
        for (int64_t f = 0; f < n_fields; ++f) {
            const float *r = rows + f * field_stride + b * example_stride;
            const float *w = weight + f * dim;
            float *gr = grad_rows + (f * batch + b) * (dim + 1);
            float *gw = grad_weight + f * dim;
            for (int64_t k = 0; k < dim; ++k) {
                gr[k] = g * (s[k] - r[k] + w[k]);
                gw[k] += g * r[k];
            }
            gr[dim] = g;
        }
        if (has_extra) {
            const float *e = extra + b * dim;
            const float *w = weight + n_fields * dim;
            float *ge = grad_extra + b * dim;
            float *gw = grad_weight + n_fields * dim;
            for (int64_t k = 0; k < dim; ++k) {
                ge[k] = g * (s[k] - e[k] + w[k]);
                gw[k] += g * e[k];
            }
        }
    }
}

/* History counts before each element (trainer.history): for elements in batch
 * order with unique-key index inverse[i] and label y[i], before[i] = stored[u]
 * plus (count, sum of y) over the earlier elements with the same key, and
 * totals[u] = (count, sum of y) over all of them. stored, before, totals:
 * [*, 2] contiguous. */
void history_prefix(const float *stored, const int64_t *inverse, const float *y, int64_t n,
                    int64_t n_keys, float *before, float *totals) {
    if (n_keys > 0) memset(totals, 0, sizeof(float) * 2 * n_keys);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t u = inverse[i];
        before[2 * i] = stored[2 * u] + totals[2 * u];
        before[2 * i + 1] = stored[2 * u + 1] + totals[2 * u + 1];
        totals[2 * u] += 1.f;
        totals[2 * u + 1] += y[i];
    }
}

/* out[i] = table[index[i]] for rows of `width` floats (index_select on dim 0). */
void gather_rows(const float *table, const int64_t *index, int64_t n, int64_t width,
                 float *out) {
    for (int64_t i = 0; i < n; ++i)
        memcpy(out + i * width, table + index[i] * width, sizeof(float) * width);
}

/* out[index[i]] += rows[i] (out zeroed first): gather_rows' backward. */
void scatter_add_rows(const float *rows, const int64_t *index, int64_t n, int64_t width,
                      int64_t n_out, float *out) {
    if (n_out > 0 && width > 0) memset(out, 0, sizeof(float) * n_out * width);
    for (int64_t i = 0; i < n; ++i) {
        float *o = out + index[i] * width;
        const float *r = rows + i * width;
        for (int64_t k = 0; k < width; ++k) o[k] += r[k];
    }
}

/* Exact dedup of the pairs (ids[i], tags[i]), by hashing: the unique pairs in
 * order of first occurrence go to uniq_ids / uniq_tags, how often each occurs
 * to counts, and each element's unique index to inverse. `slots` is scratch
 * of `capacity` entries, a power of two above n. Returns the number of unique
 * pairs. */
int64_t unique_pairs(const int64_t *ids, const int64_t *tags, int64_t n, int64_t *slots,
                     int64_t capacity, int64_t *uniq_ids, int64_t *uniq_tags, int64_t *counts,
                     int64_t *inverse) {
    const uint64_t mask = (uint64_t)capacity - 1;
    memset(slots, 0xff, sizeof(int64_t) * capacity); /* -1: empty */
    int64_t n_unique = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t id = ids[i], tag = tags[i];
        /* splitmix64's finaliser over the id, offset by the tag */
        uint64_t h = (uint64_t)id + (uint64_t)tag * 0x9E3779B97F4A7C15ull;
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
        h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
        h ^= h >> 31;
        for (uint64_t s = h & mask;; s = (s + 1) & mask) {
            const int64_t u = slots[s];
            if (u < 0) {
                slots[s] = n_unique;
                uniq_ids[n_unique] = id;
                uniq_tags[n_unique] = tag;
                counts[n_unique] = 1;
                inverse[i] = n_unique++;
                break;
            }
            if (uniq_ids[u] == id && uniq_tags[u] == tag) {
                counts[u] += 1;
                inverse[i] = u;
                break;
            }
        }
    }
    return n_unique;
}

/* trainer.tables.index.IdIndex's probes: open addressing with linear probing
 * over power-of-two slot arrays (keys, tags if tagged, vals, state: 0 empty,
 * 1 full, 2 deleted), hashed exactly as the torch version hashes. */
static inline uint64_t index_slot(int64_t id, int64_t tag, int tagged, int64_t bits) {
    uint64_t key = (uint64_t)id;
    if (tagged) key += (uint64_t)tag * 0x2545F4914F6CDD1Dull;
    return (key * 0x9E3779B97F4A7C15ull) >> (64 - bits);
}

/* slot_out[i]: the slot holding (tags[i], ids[i]), or -1. */
void index_find(const int64_t *keys, const int64_t *key_tags, const int8_t *state, int64_t bits,
                const int64_t *ids, const int64_t *tags, int64_t n, int64_t *slot_out) {
    const uint64_t mask = ((uint64_t)1 << bits) - 1;
    const int tagged = key_tags != NULL && tags != NULL;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t id = ids[i], tag = tagged ? tags[i] : 0;
        int64_t found = -1;
        for (uint64_t s = index_slot(id, tag, tagged, bits);; s = (s + 1) & mask) {
            if (state[s] == 0) break;
            if (state[s] == 1 && keys[s] == id && (!tagged || key_tags[s] == tag)) {
                found = (int64_t)s;
                break;
            }
        }
        slot_out[i] = found;
    }
}

/* Writes (tags[i], ids[i]) -> rows[i] into free slots (the pairs are absent and
 * unique, and the table has room). Returns how many were empty, not deleted. */
int64_t index_place(int64_t *keys, int64_t *key_tags, int64_t *vals, int8_t *state, int64_t bits,
                    const int64_t *ids, const int64_t *tags, const int64_t *rows, int64_t n) {
    const uint64_t mask = ((uint64_t)1 << bits) - 1;
    const int tagged = key_tags != NULL && tags != NULL;
    int64_t newly_used = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t tag = tagged ? tags[i] : 0;
        uint64_t s = index_slot(ids[i], tag, tagged, bits);
        while (state[s] == 1) s = (s + 1) & mask;
        newly_used += state[s] == 0;
        keys[s] = ids[i];
        if (tagged) key_tags[s] = tag;
        vals[s] = rows[i];
        state[s] = 1;
    }
    return newly_used;
}

/* trainer.tables.rows.id_normal: out[i, j] (j < dim) a standard normal that
 * depends only on (seed, ids[i], j), by splitmix64 and Box-Muller, bit for bit
 * the torch version's integers (the transcendental functions may round the
 * last bit of a double differently). `offset` is seed * 4 * dim, wrapped. */
static inline uint64_t splitmix_mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline double id_uniform(uint64_t id, uint64_t column) {
    const uint64_t golden = 0x9E3779B97F4A7C15ull;
    const uint64_t bits = (splitmix_mix((id * golden + column) * golden) >> 40) & 0xFFFFFF;
    return ((double)bits + 0.5) / 16777216.0;
}

void id_normal(const int64_t *ids, int64_t n, int64_t dim, int64_t offset, float *out) {
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t id = (uint64_t)ids[i];
        for (int64_t j = 0; j < dim; ++j) {
            const double u1 = id_uniform(id, (uint64_t)j + (uint64_t)offset);
            const double u2 = id_uniform(id, (uint64_t)(dim + j) + (uint64_t)offset);
            out[i * dim + j] = (float)(sqrt(-2 * log(u1)) * cos(2 * 3.141592653589793 * u2));
        }
    }
}
