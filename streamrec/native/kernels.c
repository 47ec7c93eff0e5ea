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

/* trainer.tables.index.IdIndex's probes: extendible hashing over open-addressing
 * segments. A key's hash is the top 32 bits of splitmix64's mix of
 * id + tag * 0x2545F4914F6CDD1D (id alone untagged); its top `global_bits` bits
 * index `directory` (a segment number), the next cap_bits[s] bits below the
 * segment's depth[s] bits give the home slot, and probing is linear within the
 * segment's 2^cap_bits[s] slots, which start at slots + s * stride. A slot holds
 * hash << 32 | (row + 1): 0 is empty, a zero row part otherwise deleted. Keys
 * live in row_ids[row] (and row_tags[row], int16, when tagged). Hashed exactly
 * as the torch version hashes. */
/* splitmix64's finaliser (Steele et al. 2014). */
static inline uint64_t splitmix_mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t index_key_hash(int64_t id, int64_t tag, int tagged) {
    uint64_t key = (uint64_t)id;
    if (tagged) key += (uint64_t)tag * 0x2545F4914F6CDD1Dull;
    return splitmix_mix(key) >> 32;
}

static inline int64_t index_segment(uint64_t h, const int64_t *directory, int64_t global_bits) {
    return directory[global_bits ? (int64_t)(h >> (32 - global_bits)) : 0];
}

/* out[i]: the hash of (tags[i], ids[i]) (tags NULL: untagged). */
void index_hash(const int64_t *ids, const int64_t *tags, int64_t n, int64_t *out) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = (int64_t)index_key_hash(ids[i], tags ? tags[i] : 0, tags != NULL);
}

/* slot_out[i]: the slot (s * stride + position) holding (tags[i], ids[i]), or -1.
 * row_tags and tags are both NULL for an untagged index. */
void index_find(const int64_t *slots, const int64_t *directory, const int64_t *depth,
                const int64_t *cap_bits, int64_t global_bits, int64_t stride,
                const int64_t *row_ids, const int16_t *row_tags, const int64_t *ids,
                const int64_t *tags, int64_t n, int64_t *slot_out) {
    const int tagged = row_tags != NULL && tags != NULL;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t id = ids[i], tag = tagged ? tags[i] : 0;
        const uint64_t h = index_key_hash(id, tag, tagged);
        const int64_t s = index_segment(h, directory, global_bits);
        const uint64_t mask = ((uint64_t)1 << cap_bits[s]) - 1;
        const int64_t *base = slots + s * stride;
        int64_t found = -1;
        for (uint64_t p = (h >> (32 - depth[s] - cap_bits[s])) & mask;; p = (p + 1) & mask) {
            const uint64_t v = (uint64_t)base[p];
            if (v == 0) break;
            const uint64_t row = v & 0xFFFFFFFFull;
            if (row && (v >> 32) == h && row_ids[row - 1] == id &&
                (!tagged || row_tags[row - 1] == tag)) {
                found = s * stride + (int64_t)p;
                break;
            }
        }
        slot_out[i] = found;
    }
}

/* Writes slot values (hash << 32 | row + 1) of absent keys into free slots of
 * their segments (which have room), counting per segment the empty slots
 * used (used[s]) and the entries (live[s]). */
void index_place(int64_t *slots, const int64_t *directory, const int64_t *depth,
                 const int64_t *cap_bits, int64_t global_bits, int64_t stride, int64_t *used,
                 int64_t *live, const int64_t *values, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t h = (uint64_t)values[i] >> 32;
        const int64_t s = index_segment(h, directory, global_bits);
        const uint64_t mask = ((uint64_t)1 << cap_bits[s]) - 1;
        int64_t *base = slots + s * stride;
        uint64_t p = (h >> (32 - depth[s] - cap_bits[s])) & mask;
        while (((uint64_t)base[p] & 0xFFFFFFFFull) != 0) p = (p + 1) & mask;
        used[s] += base[p] == 0;
        live[s] += 1;
        base[p] = values[i];
    }
}

/* trainer.tables.rows.id_normal: out[i, j] (j < dim) a standard normal that
 * depends only on (seed, ids[i], j), by splitmix64 and Box-Muller, bit for bit
 * the torch version's integers (the transcendental functions may round the
 * last bit of a double differently). `offset` is seed * 4 * dim, wrapped. */

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
