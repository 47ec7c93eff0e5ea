// streamrec's torch operators (namespace `streamrec`): the training step's hot loops.
//
// Schemas in TORCH_LIBRARY, CPU kernels in TORCH_LIBRARY_IMPL(CPU), autograd of the
// differentiable ones (fm_head, gather_rows) in C++ (TORCH_LIBRARY_IMPL(Autograd)).
// Built by setup.py as the extension module streamrec.native._ops; importing it
// registers the operators. Reference implementations: tests/reference_ops.py.
#include <Python.h>
#include <torch/library.h>
#include <torch/autograd.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

void check_cpu(const Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "streamrec: ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "streamrec: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
}

void check_contiguous(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "streamrec: ", name, " must be contiguous");
}

// FM head ---------------------------------------------------------------------------
// An FM's per-field part (model.ctr.CTRModel without hidden layers), one pass each way.
// rows [F, B, D+1] (any field and example strides, unit column stride: the last column
// is the first-order weight, the others the factors); extra [B, D] (one more field's
// factors without a first-order weight) or none; weight [F (+1 with extra), D] (the
// linear layer over all factors). Forward: out [B] and the factor sums [B, D].

void check_fm(const Tensor& rows, const std::optional<Tensor>& extra, const Tensor& weight) {
  TORCH_CHECK(rows.dim() == 3 && rows.size(2) >= 1,
              "streamrec.fm_head: rows must be [F, B, D+1], got ", rows.sizes());
  TORCH_CHECK(rows.scalar_type() == at::kFloat || rows.scalar_type() == at::kDouble,
              "streamrec.fm_head: rows must be float32 or float64, got ", rows.scalar_type());
  check_cpu(rows, "fm_head rows", rows.scalar_type());
  check_cpu(weight, "fm_head weight", rows.scalar_type());
  check_contiguous(weight, "fm_head weight");
  const int64_t dim = rows.size(2) - 1, fields = rows.size(0) + (extra ? 1 : 0);
  TORCH_CHECK(rows.numel() == 0 || rows.stride(2) == 1,
              "streamrec.fm_head: rows must have unit column stride");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == fields && weight.size(1) == dim,
              "streamrec.fm_head: weight must be [", fields, ", ", dim, "], got ",
              weight.sizes());
  if (extra) {
    check_cpu(*extra, "fm_head extra", rows.scalar_type());
    check_contiguous(*extra, "fm_head extra");
    TORCH_CHECK(extra->dim() == 2 && extra->size(0) == rows.size(1) && extra->size(1) == dim,
                "streamrec.fm_head: extra must be [", rows.size(1), ", ", dim, "], got ",
                extra->sizes());
  }
}

// fm_head's inputs as its kernels take them: unit column stride, contiguous extra and weight.
std::tuple<Tensor, std::optional<Tensor>, Tensor> fm_inputs(const Tensor& rows,
                                                            const std::optional<Tensor>& extra,
                                                            const Tensor& weight) {
  return {rows.dim() == 3 && rows.numel() && rows.stride(2) != 1 ? rows.contiguous() : rows,
          extra ? std::optional<Tensor>(extra->contiguous()) : std::nullopt,
          weight.contiguous()};
}

template <typename T>
void fm_forward_kernel(const T* rows, int64_t n_fields, int64_t batch, int64_t dim,
                       int64_t field_stride, int64_t example_stride, const T* extra,
                       const T* weight, T* out, T* sums) {
  for (int64_t b = 0; b < batch; ++b) {
    T* s = sums + b * dim;
    double squares = 0.0, linear = 0.0;
    if (extra) {
      const T* e = extra + b * dim;
      const T* w = weight + n_fields * dim;
      for (int64_t k = 0; k < dim; ++k) {
        s[k] = e[k];
        squares += (double)e[k] * e[k];
        linear += (double)w[k] * e[k];
      }
    } else {
      std::fill(s, s + dim, T(0));
    }
    for (int64_t f = 0; f < n_fields; ++f) {
      const T* r = rows + f * field_stride + b * example_stride;
      const T* w = weight + f * dim;
      T sq = 0, lin = 0;
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
    out[b] = (T)(linear + 0.5 * (total - squares));
  }
}

std::tuple<Tensor, Tensor> fm_head_forward_cpu(const Tensor& rows_in,
                                               const std::optional<Tensor>& extra_in,
                                               const Tensor& weight_in) {
  const auto [rows, extra, weight] = fm_inputs(rows_in, extra_in, weight_in);
  check_fm(rows, extra, weight);
  const int64_t n_fields = rows.size(0), batch = rows.size(1), dim = rows.size(2) - 1;
  Tensor out = at::empty({batch}, rows.options());
  Tensor sums = at::empty({batch, dim}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "fm_head_forward", [&] {
    fm_forward_kernel<scalar_t>(rows.data_ptr<scalar_t>(), n_fields, batch, dim,
                                rows.stride(0), rows.stride(1),
                                extra ? extra->data_ptr<scalar_t>() : nullptr,
                                weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                sums.data_ptr<scalar_t>());
  });
  return {out, sums};
}

template <typename T>
void fm_backward_kernel(const T* rows, int64_t n_fields, int64_t batch, int64_t dim,
                        int64_t field_stride, int64_t example_stride, const T* extra,
                        const T* weight, const T* sums, const T* grad, T* grad_rows,
                        T* grad_extra, T* grad_weight) {
  for (int64_t b = 0; b < batch; ++b) {
    const T g = grad[b];
    const T* s = sums + b * dim;
    for (int64_t f = 0; f < n_fields; ++f) {
      const T* r = rows + f * field_stride + b * example_stride;
      const T* w = weight + f * dim;
      T* gr = grad_rows + (f * batch + b) * (dim + 1);
      T* gw = grad_weight + f * dim;
      for (int64_t k = 0; k < dim; ++k) {
        gr[k] = g * (s[k] - r[k] + w[k]);
        gw[k] += g * r[k];
      }
      gr[dim] = g;
    }
    if (extra) {
      const T* e = extra + b * dim;
      const T* w = weight + n_fields * dim;
      T* ge = grad_extra + b * dim;
      T* gw = grad_weight + n_fields * dim;
      for (int64_t k = 0; k < dim; ++k) {
        ge[k] = g * (s[k] - e[k] + w[k]);
        gw[k] += g * e[k];
      }
    }
  }
}

// Gradients (rows [F, B, D+1] contiguous, extra [B, D] or [0] without extra, weight)
// for the output's gradient `grad` [B]; `sums` is the forward's.
std::tuple<Tensor, Tensor, Tensor> fm_head_backward_cpu(const Tensor& rows_in,
                                                        const std::optional<Tensor>& extra_in,
                                                        const Tensor& weight_in, const Tensor& sums,
                                                        const Tensor& grad_in) {
  const auto [rows, extra, weight] = fm_inputs(rows_in, extra_in, weight_in);
  check_fm(rows, extra, weight);
  const int64_t n_fields = rows.size(0), batch = rows.size(1), dim = rows.size(2) - 1;
  check_cpu(sums, "fm_head sums", rows.scalar_type());
  check_contiguous(sums, "fm_head sums");
  TORCH_CHECK(sums.dim() == 2 && sums.size(0) == batch && sums.size(1) == dim,
              "streamrec.fm_head_backward: sums must be [", batch, ", ", dim, "]");
  check_cpu(grad_in, "fm_head grad", rows.scalar_type());
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == batch,
              "streamrec.fm_head_backward: grad must be [", batch, "], got ", grad_in.sizes());
  const Tensor grad = grad_in.contiguous();
  Tensor grad_rows = at::empty({n_fields, batch, dim + 1}, rows.options());
  Tensor grad_extra = extra ? at::empty_like(*extra) : at::empty({0}, rows.options());
  Tensor grad_weight = at::zeros_like(weight);
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "fm_head_backward", [&] {
    fm_backward_kernel<scalar_t>(rows.data_ptr<scalar_t>(), n_fields, batch, dim,
                                 rows.stride(0), rows.stride(1),
                                 extra ? extra->data_ptr<scalar_t>() : nullptr,
                                 weight.data_ptr<scalar_t>(), sums.data_ptr<scalar_t>(),
                                 grad.data_ptr<scalar_t>(), grad_rows.data_ptr<scalar_t>(),
                                 extra ? grad_extra.data_ptr<scalar_t>() : nullptr,
                                 grad_weight.data_ptr<scalar_t>());
  });
  return {grad_rows, grad_extra, grad_weight};
}

Tensor fm_head_cpu(const Tensor& rows, const std::optional<Tensor>& extra, const Tensor& weight) {
  return std::get<0>(fm_head_forward_cpu(rows, extra, weight));
}

// Gather of rows -------------------------------------------------------------------

void check_index(const Tensor& index, const char* name) {
  check_cpu(index, name, at::kLong);
  TORCH_CHECK(index.dim() == 1, "streamrec: ", name, " must be 1-D, got ", index.sizes());
}

// The error of an index outside [0, rows), out of the hot loops' way.
[[noreturn]] C10_NOINLINE void out_of_range(const char* op, int64_t value, int64_t at,
                                            int64_t rows) {
  TORCH_CHECK(false, "streamrec.", op, ": index ", value, " at ", at, " out of range for ",
              rows, " rows");
  std::abort();  // (TORCH_CHECK(false) throws)
}

inline void check_index_value(const char* op, int64_t value, int64_t at, int64_t rows) {
  if (C10_UNLIKELY((uint64_t)value >= (uint64_t)rows)) out_of_range(op, value, at, rows);
}

template <typename T>
void gather_kernel(const T* table, const int64_t* index, int64_t n, int64_t rows, int64_t width,
                   T* out) {
  for (int64_t i = 0; i < n; ++i) {
    check_index_value("gather_rows", index[i], i, rows);
    const T* src = table + index[i] * width;
    T* dst = out + i * width;
    for (int64_t k = 0; k < width; ++k) dst[k] = src[k];
  }
}

// out[i] = table[index[i]]: index_select on dim 0, one memcpy per row.
Tensor gather_rows_cpu(const Tensor& table_in, const Tensor& index_in) {
  TORCH_CHECK(table_in.dim() == 2, "streamrec.gather_rows: table must be 2-D, got ",
              table_in.sizes());
  TORCH_CHECK(table_in.scalar_type() == at::kFloat || table_in.scalar_type() == at::kDouble,
              "streamrec.gather_rows: table must be float32 or float64, got ",
              table_in.scalar_type());
  check_cpu(table_in, "gather_rows table", table_in.scalar_type());
  check_index(index_in, "gather_rows index");
  const Tensor table = table_in.contiguous(), index = index_in.contiguous();
  const int64_t n = index.numel(), width = table.size(1);
  Tensor out = at::empty({n, width}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "gather_rows", [&] {
    gather_kernel<scalar_t>(table.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), n,
                            table.size(0), width, out.data_ptr<scalar_t>());
  });
  return out;
}

// out [n_rows, width] zeroed, then out[index[i]] += grad[i]: gather_rows' backward.
Tensor scatter_add_rows_cpu(const Tensor& grad_in, const Tensor& index_in, int64_t n_rows) {
  TORCH_CHECK(grad_in.dim() == 2, "streamrec.scatter_add_rows: grad must be 2-D");
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat || grad_in.scalar_type() == at::kDouble,
              "streamrec.scatter_add_rows: grad must be float32 or float64");
  check_cpu(grad_in, "scatter_add_rows grad", grad_in.scalar_type());
  check_index(index_in, "scatter_add_rows index");
  TORCH_CHECK(index_in.numel() == grad_in.size(0),
              "streamrec.scatter_add_rows: one index per row of grad");
  TORCH_CHECK(n_rows >= 0, "streamrec.scatter_add_rows: n_rows must be >= 0, got ", n_rows);
  const Tensor grad = grad_in.contiguous(), index = index_in.contiguous();
  const int64_t n = index.numel(), width = grad.size(1);
  Tensor out = at::zeros({n_rows, width}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scatter_add_rows", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t* idx = index.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      check_index_value("scatter_add_rows", idx[i], i, n_rows);
      scalar_t* dst = o + idx[i] * width;
      const scalar_t* src = g + i * width;
      for (int64_t k = 0; k < width; ++k) dst[k] += src[k];
    }
  });
  return out;
}

// History counts ---------------------------------------------------------------------
// For elements in batch order with unique-key index inverse[i] and label y[i]:
// before[i] = stored[u] plus (count, sum of y) over the earlier elements with the same
// key; totals[u] = (count, sum of y) over all of them.
std::tuple<Tensor, Tensor> history_prefix_cpu(const Tensor& stored_in, const Tensor& inverse_in,
                                              const Tensor& y_in) {
  check_cpu(stored_in, "history_prefix stored", at::kFloat);
  TORCH_CHECK(stored_in.dim() == 2 && stored_in.size(1) == 2,
              "streamrec.history_prefix: stored must be [U, 2], got ", stored_in.sizes());
  check_index(inverse_in, "history_prefix inverse");
  check_cpu(y_in, "history_prefix y", at::kFloat);
  TORCH_CHECK(y_in.dim() == 1 && y_in.numel() == inverse_in.numel(),
              "streamrec.history_prefix: y must be [", inverse_in.numel(), "]");
  const Tensor stored = stored_in.contiguous(), inverse = inverse_in.contiguous(),
               y = y_in.contiguous();
  const int64_t n = inverse.numel(), n_keys = stored.size(0);
  Tensor before = at::empty({n, 2}, stored.options());
  Tensor totals = at::zeros({n_keys, 2}, stored.options());
  const float* s = stored.data_ptr<float>();
  const float* yy = y.data_ptr<float>();
  const int64_t* inv = inverse.data_ptr<int64_t>();
  float* b = before.data_ptr<float>();
  float* t = totals.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = inv[i];
    check_index_value("history_prefix", u, i, n_keys);
    b[2 * i] = s[2 * u] + t[2 * u];
    b[2 * i + 1] = s[2 * u + 1] + t[2 * u + 1];
    t[2 * u] += 1.f;
    t[2 * u + 1] += yy[i];
  }
  return {before, totals};
}

// Wide terms ---------------------------------------------------------------------------
// Per-event logistic regression over hashed feature crosses (model.wide), learned in
// event order. Example i reads the rows slots[offsets[i]:offsets[i+1]] of state [U, 2]
// (weight, sum of squared gradients): its term sum s[i] is their weights' sum, its
// probability sigmoid(base[i] + s[i]), its gradient g = n p - c for outcome (n, c)
// (zero for (0, 0): a read), and each learnable row of its K rows then takes an
// Adagrad step normalised by K, w -= lr g / (K sqrt(acc0 + G)), so that the step of the
// whole logit does not grow with the number of terms. Returns the sums before each
// example's own step and the new state.
std::tuple<Tensor, Tensor> wide_learn_cpu(const Tensor& state_in, const Tensor& offsets_in,
                                          const Tensor& slots_in, const Tensor& learnable_in,
                                          const Tensor& base_in, const Tensor& outcomes_in,
                                          double lr, double acc0) {
  check_cpu(state_in, "wide_learn state", at::kFloat);
  TORCH_CHECK(state_in.dim() == 2 && state_in.size(1) == 2,
              "streamrec.wide_learn: state must be [U, 2], got ", state_in.sizes());
  check_index(offsets_in, "wide_learn offsets");
  check_index(slots_in, "wide_learn slots");
  check_cpu(learnable_in, "wide_learn learnable", at::kBool);
  check_cpu(base_in, "wide_learn base", at::kFloat);
  check_cpu(outcomes_in, "wide_learn outcomes", at::kFloat);
  const int64_t n_rows = state_in.size(0), batch = base_in.numel();
  TORCH_CHECK(learnable_in.dim() == 1 && learnable_in.numel() == n_rows,
              "streamrec.wide_learn: learnable must be [", n_rows, "]");
  TORCH_CHECK(offsets_in.numel() == batch + 1,
              "streamrec.wide_learn: offsets must be [", batch + 1, "], got ",
              offsets_in.numel());
  TORCH_CHECK(outcomes_in.dim() == 2 && outcomes_in.size(0) == batch &&
                  outcomes_in.size(1) == 2,
              "streamrec.wide_learn: outcomes must be [", batch, ", 2], got ",
              outcomes_in.sizes());
  TORCH_CHECK(lr >= 0 && acc0 > 0, "streamrec.wide_learn: needs lr >= 0 and acc0 > 0");
  Tensor state = state_in.clone(at::MemoryFormat::Contiguous);
  const Tensor offsets = offsets_in.contiguous(), slots = slots_in.contiguous(),
               learnable = learnable_in.contiguous(), base = base_in.contiguous(),
               outcomes = outcomes_in.contiguous();
  Tensor sums = at::empty({batch}, base.options());
  float* st = state.data_ptr<float>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* sl = slots.data_ptr<int64_t>();
  const bool* learn = learnable.data_ptr<bool>();
  const float* b = base.data_ptr<float>();
  const float* oc = outcomes.data_ptr<float>();
  float* out = sums.data_ptr<float>();
  const int64_t n_slots = slots.numel();
  TORCH_CHECK(batch == 0 || (off[0] == 0 && off[batch] == n_slots),
              "streamrec.wide_learn: offsets must run from 0 to ", n_slots);
  for (int64_t i = 0; i < batch; ++i) {
    TORCH_CHECK(off[i] <= off[i + 1], "streamrec.wide_learn: offsets must not decrease (at ",
                i, ")");
    double s = 0;
    for (int64_t e = off[i]; e < off[i + 1]; ++e) {
      check_index_value("wide_learn", sl[e], e, n_rows);
      s += st[2 * sl[e]];
    }
    out[i] = static_cast<float>(s);
    const double n = oc[2 * i], c = oc[2 * i + 1];
    if (n == 0 && c == 0) continue;
    const double p = 1.0 / (1.0 + std::exp(-(static_cast<double>(b[i]) + s)));
    const double g = n * p - c;
    if (g == 0 || !std::isfinite(g)) continue;
    const double step = lr * g / static_cast<double>(off[i + 1] - off[i]);
    for (int64_t e = off[i]; e < off[i + 1]; ++e) {
      const int64_t u = sl[e];
      if (!learn[u]) continue;
      const double acc = st[2 * u + 1] + g * g;
      st[2 * u + 1] = static_cast<float>(acc);
      st[2 * u] = static_cast<float>(st[2 * u] - step / std::sqrt(acc0 + acc));
    }
  }
  return {sums, state};
}

// Hashing ----------------------------------------------------------------------------

// splitmix64's finaliser (Steele et al. 2014).
inline uint64_t splitmix_mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Exact dedup of the pairs (ids[i], tags[i]) by hashing: (ids, tags, inverse, counts)
// of the unique pairs, in order of first occurrence.
std::tuple<Tensor, Tensor, Tensor, Tensor> unique_pairs_cpu(const Tensor& ids_in,
                                                            const Tensor& tags_in) {
  check_index(ids_in, "unique_pairs ids");
  check_index(tags_in, "unique_pairs tags");
  TORCH_CHECK(ids_in.numel() == tags_in.numel(),
              "streamrec.unique_pairs: ids and tags must have the same length");
  const Tensor ids_c = ids_in.contiguous(), tags_c = tags_in.contiguous();
  const int64_t n = ids_c.numel();
  int64_t capacity = 16;
  while (capacity < 2 * n + 1) capacity <<= 1;  // under half full
  std::vector<int64_t> slots(capacity, -1);
  const uint64_t mask = (uint64_t)capacity - 1;
  const auto opts = ids_c.options();
  Tensor uniq_ids = at::empty({n}, opts), uniq_tags = at::empty({n}, opts),
         counts = at::empty({n}, opts), inverse = at::empty({n}, opts);
  const int64_t* ids = ids_c.data_ptr<int64_t>();
  const int64_t* tags = tags_c.data_ptr<int64_t>();
  int64_t* ui = uniq_ids.data_ptr<int64_t>();
  int64_t* ut = uniq_tags.data_ptr<int64_t>();
  int64_t* cn = counts.data_ptr<int64_t>();
  int64_t* inv = inverse.data_ptr<int64_t>();
  int64_t n_unique = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i], tag = tags[i];
    // splitmix64's finaliser over the id, offset by the tag
    const uint64_t h = splitmix_mix((uint64_t)id + (uint64_t)tag * 0x9E3779B97F4A7C15ull);
    for (uint64_t s = h & mask;; s = (s + 1) & mask) {
      const int64_t u = slots[s];
      if (u < 0) {
        slots[s] = n_unique;
        ui[n_unique] = id;
        ut[n_unique] = tag;
        cn[n_unique] = 1;
        inv[i] = n_unique++;
        break;
      }
      if (ui[u] == id && ut[u] == tag) {
        cn[u] += 1;
        inv[i] = u;
        break;
      }
    }
  }
  return {uniq_ids.narrow(0, 0, n_unique), uniq_tags.narrow(0, 0, n_unique), inverse,
          counts.narrow(0, 0, n_unique)};
}

// The id index's probes (model.tables.index.IdIndex): extendible hashing over
// open-addressing segments. A key's hash is the top 32 bits of splitmix64's mix of
// id + tag * 0x2545F4914F6CDD1D (id alone untagged); its top `global_bits` bits index
// `directory` (a segment number), the next cap_bits[s] bits below the segment's depth[s]
// bits give the home slot, and probing is linear within the segment's 2^cap_bits[s]
// slots, which start at slots + s * stride. A slot holds hash << 32 | (row + 1): 0 is
// empty, a zero row part otherwise deleted.

inline uint64_t index_key_hash(int64_t id, int64_t tag, bool tagged) {
  uint64_t key = (uint64_t)id;
  if (tagged) key += (uint64_t)tag * 0x2545F4914F6CDD1Dull;
  return splitmix_mix(key) >> 32;
}

Tensor index_hash_cpu(const Tensor& ids_in, const std::optional<Tensor>& tags_in) {
  check_index(ids_in, "index_hash ids");
  const Tensor ids = ids_in.contiguous();
  Tensor tags;
  if (tags_in) {
    check_index(*tags_in, "index_hash tags");
    TORCH_CHECK(tags_in->numel() == ids.numel(),
                "streamrec.index_hash: ids and tags must have the same length");
    tags = tags_in->contiguous();
  }
  const int64_t n = ids.numel();
  Tensor out = at::empty({n}, ids.options());
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* tag = tags_in ? tags.data_ptr<int64_t>() : nullptr;
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    o[i] = (int64_t)index_key_hash(id[i], tag ? tag[i] : 0, tag != nullptr);
  return out;
}

// An id index's arrays hold what no index writes: out of the probe loops' way.
[[noreturn]] C10_NOINLINE void index_error(const char* what, int64_t value, int64_t limit) {
  TORCH_CHECK(false, "streamrec: id index ", what, " (", value, "; ", limit, ")");
  std::abort();  // (TORCH_CHECK(false) throws)
}

// The segment layout's arrays, checked once per call.
struct Layout {
  int64_t* slots;
  const int64_t* directory;
  const int64_t* depth;
  const int64_t* cap_bits;
  int64_t n_slots, n_directory, n_segments, global_bits, stride;

  int64_t segment(uint64_t h) const {
    const int64_t d = global_bits ? (int64_t)(h >> (32 - global_bits)) : 0;
    const int64_t s = directory[d];
    if (C10_UNLIKELY((uint64_t)s >= (uint64_t)n_segments))
      index_error("directory entry out of range for the segments", s, n_segments);
    if (C10_UNLIKELY(cap_bits[s] < 0 || depth[s] < 0 || depth[s] + cap_bits[s] > 32 ||
                     s * stride + ((int64_t)1 << cap_bits[s]) > n_slots))
      index_error("segment does not fit the slots", s, n_slots);
    return s;
  }
};

Layout check_layout(const Tensor& slots, const Tensor& directory, const Tensor& depth,
                    const Tensor& cap_bits, int64_t global_bits, int64_t stride) {
  const char* names[] = {"slots", "directory", "depth", "cap_bits"};
  const Tensor* tensors[] = {&slots, &directory, &depth, &cap_bits};
  for (int k = 0; k < 4; ++k) {
    check_index(*tensors[k], names[k]);
    check_contiguous(*tensors[k], names[k]);
  }
  TORCH_CHECK(global_bits >= 0 && global_bits <= 32 &&
                  directory.numel() >= ((int64_t)1 << global_bits),
              "streamrec: id index directory needs 2^global_bits entries (global_bits ",
              global_bits, ", ", directory.numel(), " entries)");
  TORCH_CHECK(stride > 0, "streamrec: id index stride must be > 0, got ", stride);
  TORCH_CHECK(depth.numel() == cap_bits.numel(),
              "streamrec: id index depth and cap_bits must have one entry per segment");
  return Layout{slots.data_ptr<int64_t>(), directory.data_ptr<int64_t>(),
                depth.data_ptr<int64_t>(), cap_bits.data_ptr<int64_t>(), slots.numel(),
                directory.numel(), depth.numel(), global_bits, stride};
}

// The slot (s * stride + position) holding (tags[i], ids[i]), or -1. row_tags (int16) and
// tags are both given for a tagged index.
Tensor index_find_cpu(const Tensor& slots, const Tensor& directory, const Tensor& depth,
                      const Tensor& cap_bits, int64_t global_bits, int64_t stride,
                      const Tensor& row_ids, const std::optional<Tensor>& row_tags,
                      const Tensor& ids_in, const std::optional<Tensor>& tags_in) {
  const Layout lay = check_layout(slots, directory, depth, cap_bits, global_bits, stride);
  check_index(row_ids, "index_find row_ids");
  check_contiguous(row_ids, "index_find row_ids");
  check_index(ids_in, "index_find ids");
  TORCH_CHECK(row_tags.has_value() == tags_in.has_value(),
              "streamrec.index_find: give both row_tags and tags (tagged) or neither");
  const bool tagged = row_tags.has_value();
  Tensor tags;
  if (tagged) {
    check_cpu(*row_tags, "index_find row_tags", at::kShort);
    check_contiguous(*row_tags, "index_find row_tags");
    check_index(*tags_in, "index_find tags");
    TORCH_CHECK(tags_in->numel() == ids_in.numel(),
                "streamrec.index_find: ids and tags must have the same length");
    tags = tags_in->contiguous();
  }
  const Tensor ids = ids_in.contiguous();
  const int64_t n = ids.numel(),
                n_rows = tagged ? std::min(row_ids.numel(), row_tags->numel()) : row_ids.numel();
  Tensor out = at::empty({n}, ids.options());
  const int64_t* id_p = ids.data_ptr<int64_t>();
  const int64_t* tag_p = tagged ? tags.data_ptr<int64_t>() : nullptr;
  const int64_t* rid = row_ids.data_ptr<int64_t>();
  const int16_t* rtag = tagged ? row_tags->data_ptr<int16_t>() : nullptr;
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = id_p[i], tag = tagged ? tag_p[i] : 0;
    const uint64_t h = index_key_hash(id, tag, tagged);
    const int64_t s = lay.segment(h);
    const uint64_t mask = ((uint64_t)1 << lay.cap_bits[s]) - 1;
    const int64_t* base = lay.slots + s * lay.stride;
    int64_t found = -1;
    uint64_t p = (h >> (32 - lay.depth[s] - lay.cap_bits[s])) & mask;
    for (uint64_t probes = 0;; p = (p + 1) & mask, ++probes) {
      if (C10_UNLIKELY(probes > mask)) index_error("segment has no empty slot", s, probes);
      const uint64_t v = (uint64_t)base[p];
      if (v == 0) break;
      const int64_t row = (int64_t)(v & 0xFFFFFFFFull);
      if (row && (v >> 32) == h) {
        if (C10_UNLIKELY(row > n_rows)) index_error("slot row out of range", row - 1, n_rows);
        if (rid[row - 1] == id && (!tagged || rtag[row - 1] == tag)) {
          found = s * lay.stride + (int64_t)p;
          break;
        }
      }
    }
    o[i] = found;
  }
  return out;
}

// Writes slot values (hash << 32 | row + 1) of absent keys into free slots of their
// segments (which must have room), counting per segment the empty slots used (used[s])
// and the entries (live[s]).
void index_place_cpu(const Tensor& slots, const Tensor& directory, const Tensor& depth,
                     const Tensor& cap_bits, int64_t global_bits, int64_t stride,
                     const Tensor& used, const Tensor& live, const Tensor& values_in) {
  const Layout lay = check_layout(slots, directory, depth, cap_bits, global_bits, stride);
  for (const Tensor* t : {&used, &live}) {
    check_index(*t, "index_place counts");
    check_contiguous(*t, "index_place counts");
    TORCH_CHECK(t->numel() >= lay.n_segments,
                "streamrec.index_place: used and live need one entry per segment");
  }
  check_index(values_in, "index_place values");
  const Tensor values = values_in.contiguous();
  const int64_t* v = values.data_ptr<int64_t>();
  int64_t* u = used.data_ptr<int64_t>();
  int64_t* l = live.data_ptr<int64_t>();
  for (int64_t i = 0, n = values.numel(); i < n; ++i) {
    const uint64_t h = (uint64_t)v[i] >> 32;
    const int64_t s = lay.segment(h);
    const uint64_t mask = ((uint64_t)1 << lay.cap_bits[s]) - 1;
    int64_t* base = lay.slots + s * lay.stride;
    uint64_t p = (h >> (32 - lay.depth[s] - lay.cap_bits[s])) & mask;
    for (uint64_t probes = 0; ((uint64_t)base[p] & 0xFFFFFFFFull) != 0; p = (p + 1) & mask) {
      if (C10_UNLIKELY(++probes > mask)) index_error("segment is full", s, probes);
    }
    u[s] += base[p] == 0;
    l[s] += 1;
    base[p] = v[i];
  }
}

// Row initialisation -------------------------------------------------------------------
// model.tables.rows.id_normal: out[i, j] (j < dim) a standard normal that depends only on
// (seed, ids[i], j), by splitmix64 and Box-Muller. `offset` is seed * 4 * dim, wrapped.

inline double id_uniform(uint64_t id, uint64_t column) {
  const uint64_t golden = 0x9E3779B97F4A7C15ull;
  const uint64_t bits = (splitmix_mix((id * golden + column) * golden) >> 40) & 0xFFFFFF;
  return ((double)bits + 0.5) / 16777216.0;
}

Tensor id_normal_cpu(const Tensor& ids_in, int64_t dim, int64_t offset) {
  check_cpu(ids_in, "id_normal ids", at::kLong);
  TORCH_CHECK(dim >= 0, "streamrec.id_normal: dim must be >= 0, got ", dim);
  const Tensor ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  Tensor out = at::empty({n, dim}, ids.options().dtype(at::kFloat));
  const int64_t* id_p = ids.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t id = (uint64_t)id_p[i];
    for (int64_t j = 0; j < dim; ++j) {
      const double u1 = id_uniform(id, (uint64_t)j + (uint64_t)offset);
      const double u2 = id_uniform(id, (uint64_t)(dim + j) + (uint64_t)offset);
      o[i * dim + j] = (float)(std::sqrt(-2 * std::log(u1)) *
                               std::cos(2 * 3.141592653589793 * u2));
    }
  }
  return out;
}

// Autograd -----------------------------------------------------------------------------

class FMHead : public torch::autograd::Function<FMHead> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& rows,
                        const std::optional<Tensor>& extra, const Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("streamrec::fm_head_forward", "")
                         .typed<decltype(fm_head_forward_cpu)>();
    auto [out, sums] = op.call(rows, extra, weight);
    ctx->save_for_backward({rows, extra ? *extra : Tensor(), weight, sums});
    ctx->saved_data["has_extra"] = extra.has_value();
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_extra = ctx->saved_data["has_extra"].toBool();
    const std::optional<Tensor> extra = has_extra ? std::optional<Tensor>(saved[1]) : std::nullopt;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("streamrec::fm_head_backward", "")
                         .typed<decltype(fm_head_backward_cpu)>();
    auto [grad_rows, grad_extra, grad_weight] =
        op.call(saved[0], extra, saved[2], saved[3], grads[0]);
    return {grad_rows, has_extra ? grad_extra : Tensor(), grad_weight};
  }
};

Tensor fm_head_autograd(const Tensor& rows, const std::optional<Tensor>& extra,
                        const Tensor& weight) {
  return FMHead::apply(rows, extra, weight);
}

class GatherRows : public torch::autograd::Function<GatherRows> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& table,
                        const Tensor& index) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("streamrec::gather_rows", "")
                         .typed<decltype(gather_rows_cpu)>();
    ctx->save_for_backward({index});
    ctx->saved_data["rows"] = table.sym_size(0);
    return op.call(table, index);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("streamrec::scatter_add_rows", "")
                         .typed<Tensor(const Tensor&, const Tensor&, c10::SymInt)>();
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], ctx->saved_data["rows"].toSymInt()), Tensor()};
  }
};

Tensor gather_rows_autograd(const Tensor& table, const Tensor& index) {
  return GatherRows::apply(table, index);
}

}  // namespace

TORCH_LIBRARY(streamrec, m) {
  m.def("fm_head(Tensor rows, Tensor? extra, Tensor weight) -> Tensor");
  m.def("fm_head_forward(Tensor rows, Tensor? extra, Tensor weight) -> (Tensor, Tensor)");
  m.def("fm_head_backward(Tensor rows, Tensor? extra, Tensor weight, Tensor sums, "
        "Tensor grad) -> (Tensor, Tensor, Tensor)");
  m.def("gather_rows(Tensor table, Tensor index) -> Tensor");
  m.def("scatter_add_rows(Tensor grad, Tensor index, SymInt n_rows) -> Tensor");
  m.def("history_prefix(Tensor stored, Tensor inverse, Tensor y) -> (Tensor, Tensor)");
  m.def("unique_pairs(Tensor ids, Tensor tags) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("wide_learn(Tensor state, Tensor offsets, Tensor slots, Tensor learnable, Tensor base, "
        "Tensor outcomes, float lr, float acc0) -> (Tensor, Tensor)");
  m.def("index_hash(Tensor ids, Tensor? tags) -> Tensor");
  m.def("index_find(Tensor slots, Tensor directory, Tensor depth, Tensor cap_bits, "
        "int global_bits, int stride, Tensor row_ids, Tensor? row_tags, Tensor ids, "
        "Tensor? tags) -> Tensor");
  m.def("index_place(Tensor(a!) slots, Tensor directory, Tensor depth, Tensor cap_bits, "
        "int global_bits, int stride, Tensor(b!) used, Tensor(c!) live, Tensor values) -> ()");
  m.def("id_normal(Tensor ids, int dim, int offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(streamrec, CPU, m) {
  m.impl("fm_head", &fm_head_cpu);
  m.impl("fm_head_forward", &fm_head_forward_cpu);
  m.impl("fm_head_backward", &fm_head_backward_cpu);
  m.impl("gather_rows", &gather_rows_cpu);
  m.impl("scatter_add_rows", &scatter_add_rows_cpu);
  m.impl("history_prefix", &history_prefix_cpu);
  m.impl("unique_pairs", &unique_pairs_cpu);
  m.impl("wide_learn", &wide_learn_cpu);
  m.impl("index_hash", &index_hash_cpu);
  m.impl("index_find", &index_find_cpu);
  m.impl("index_place", &index_place_cpu);
  m.impl("id_normal", &id_normal_cpu);
}

TORCH_LIBRARY_IMPL(streamrec, Autograd, m) {
  m.impl("fm_head", &fm_head_autograd);
  m.impl("gather_rows", &gather_rows_autograd);
}

// An importable module: `import streamrec.native._ops` registers the operators above.
static struct PyModuleDef ops_module = {PyModuleDef_HEAD_INIT, "_ops",
                                       "streamrec's torch operators (torch.ops.streamrec)", -1,
                                       nullptr};

PyMODINIT_FUNC PyInit__ops(void) { return PyModule_Create(&ops_module); }
