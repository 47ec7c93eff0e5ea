"""The CTR model: DeepFM over per-feature pooled embeddings; without hidden
layers (the default) an FM with one linear layer over its factors, whose
forward and backward are one operator (:func:`streamrec.native.fm_head`).

The embedding tables are not part of this module: they are dynamic (rows come
and go with the id space) and live in :mod:`streamrec.model.tables`, or in serving's
replica. The model receives pooled rows and dense features and returns logits,
so trainer and serving run exactly the same dense computation.

Each table row has ``embedding_dim + 1`` columns: the last is the id's
first-order (linear) weight, the rest its factor vector (DeepFM, Guo et al. 2017).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict

import torch
from torch import nn
from torch.nn import functional as F

from streamrec.config import ModelConfig
from streamrec import native
from streamrec.model.adapt import in_batch_correction
from streamrec.model.history import history_inputs
from streamrec.ingest.batch import KeyedJaggedTensor

__all__ = ["CTRModel", "fm_interaction", "pool_features", "model_spec", "model_from_spec",
           "spec_feature_tables"]

Lookup = Callable[[str, torch.Tensor], torch.Tensor]


def pool_features(sparse: KeyedJaggedTensor, features: list[str], lookup: Lookup) -> torch.Tensor:
    """Mean-pool each feature's rows per example.

    ``lookup(feature, ids)`` returns ``[len(ids), row_dim]`` rows (zeros for
    ids without a row). Returns ``[B, len(features), row_dim]``; an example with
    no ids for a feature gets a zero vector.
    """
    batch = sparse.stride()
    pooled = []
    for feature in features:
        jt = sparse[feature]
        lengths = jt.lengths().to(torch.int64)
        rows = lookup(feature, jt.values())
        segment = torch.repeat_interleave(torch.arange(batch), lengths)
        total = torch.zeros((batch, rows.shape[1]), dtype=rows.dtype).index_add(0, segment, rows)
        pooled.append(total / lengths.clamp(min=1).unsqueeze(1).to(rows.dtype))
    return torch.stack(pooled, dim=1)


class _FMInteraction(torch.autograd.Function):
    """FM's second-order term with a hand-written backward.

    Autograd of the textbook expression makes ~10 passes over ``[B, K, d]``
    (pow, sums, their backwards); this is two forward passes and two backward
    ones, which matters because the term is as costly as the MLP per example.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, v: torch.Tensor) -> torch.Tensor:
        s = v.sum(dim=1)
        ctx.save_for_backward(v, s)
        sum_of_squares = torch.linalg.vector_norm(v.flatten(1), dim=1).square()
        return 0.5 * (s.square().sum(dim=1) - sum_of_squares)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        v, s = ctx.saved_tensors  # type: ignore[attr-defined]
        # d/dv_k of 0.5 * (|sum_j v_j|^2 - sum_j |v_j|^2) = sum_j v_j - v_k
        return (s.unsqueeze(1) - v).mul_(grad.view(-1, 1, 1))


def fm_interaction(factors: torch.Tensor) -> torch.Tensor:
    """``[B]``: sum over field pairs i < j of <v_i, v_j> for ``factors`` ``[B, K, d]``."""
    return _FMInteraction.apply(factors)


class CTRModel(nn.Module):
    """DeepFM: bias + first-order + FM second-order + MLP, over F fields.

    Dense features are projected to one extra field so they take part in the
    FM interactions and the MLP alike.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        n_history = 2 * len(config.history_features)
        n_dense = len(config.dense_features) + n_history
        self.dense_proj = nn.Linear(n_dense, d) if n_dense else None
        fields = len(config.sparse_features) + (1 if n_dense else 0)
        layers: list[nn.Module] = []
        width = fields * d + n_dense
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(1))
        # One weight per in-batch adaptation term (trainer.adapt).
        self.in_batch_terms = [term.split("*") for term in config.in_batch_terms]
        self.in_batch_weight = nn.Parameter(
            torch.full((len(self.in_batch_terms),), float(config.in_batch_weight)))
        # Running click rate of the stream: the prior that history features
        # are smoothed towards. A buffer, so it is synced with the weights.
        self.register_buffer("prior_ctr", torch.full((1,), 0.1))
        # Start the deep part near zero so early predictions come from the
        # bias and first-order terms, which learn fastest from few events.
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def row_dim(self) -> int:
        return self.config.embedding_dim + 1

    def forward(self, pooled: torch.Tensor, dense: torch.Tensor,
                history: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B]``.

        ``pooled`` is ``[B, F, d+1]``, ``dense`` ``[B, n_dense]``, and
        ``history`` the ``[B, H, 2]`` (n, c) counts of ``config.history_features``
        (see trainer.history), required when there are history features.
        """
        if self.config.field_scale != 1.0:
            pooled = pooled * self.config.field_scale
        if self.config.history_features:
            if history is None:
                raise ValueError("this model reads history features: pass history counts")
            dense = torch.cat([dense, history_inputs(history, self.prior_ctr,
                                                     self.config.history_strength)], dim=1)
        if not self.config.hidden:
            return self._fm(pooled, dense)
        factors = pooled[..., :-1]
        first_order = pooled[..., -1].sum(dim=1)
        if self.dense_proj is not None:
            factors = torch.cat([factors, self.dense_proj(dense).unsqueeze(1)], dim=1)
        fm = fm_interaction(factors)
        deep = self._first_layer(factors.flatten(1), dense)
        for layer in itertools.islice(self.mlp, 1, None):  # (slicing builds a new Sequential)
            deep = layer(deep)
        deep = deep.squeeze(1)
        return self.bias + first_order + fm + deep

    def in_batch(self, sparse: KeyedJaggedTensor, labels: torch.Tensor, logits: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]``: the in-batch adaptation of a training batch's ``logits``
        (:mod:`trainer.adapt`; ``weights``: the examples' loss weights); zeros
        without terms. Scoring without labels (serving) has no such term."""
        if not self.in_batch_terms:
            return torch.zeros_like(logits)
        return in_batch_correction(sparse, self.in_batch_terms, labels, logits,
                                   self.in_batch_weight, self.config.in_batch_strength, weights)

    def _fm(self, pooled: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without hidden layers (an FM with a linear layer over
        its factors): the same function, its per-field part in one operator.

        That part is dominated by passes over the ``[F, B, d+1]`` pooled rows:
        autograd of the layer-wise expression makes about ten, the operator one
        each way, and writes the rows' gradient in their own layout."""
        linear = self.mlp[0]
        assert isinstance(linear, nn.Linear)
        d = self.config.embedding_dim
        k = linear.in_features - dense.shape[1]  # the factor columns, fields first
        extra = self.dense_proj(dense) if self.dense_proj is not None else None
        out = native.fm_head(pooled.transpose(0, 1), extra, linear.weight[0, :k].view(-1, d))
        if dense.shape[1]:
            out = out + F.linear(dense, linear.weight[:, k:]).squeeze(1)
        return self.bias + linear.bias + out

    def _first_layer(self, factors: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``mlp[0]`` applied to ``cat([factors, dense])`` without building the concatenation.

        Two products over column slices of one weight: no copy of the inputs,
        and no input gradient computed for the dense columns, which need none.
        """
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        k = factors.shape[1]
        out = F.linear(factors, first.weight[:, :k], first.bias)
        if dense.shape[1]:
            out = out + F.linear(dense, first.weight[:, k:])
        return out


def model_spec(config: ModelConfig, feature_tables: Mapping[str, str] | None = None) -> str:
    """The JSON description a replica needs to rebuild the model.

    ``feature_tables`` (feature -> the table it looks up) goes in only where a
    feature looks up a table not named after it, so the spec of one table per
    feature is the same with or without it.
    """
    spec: dict[str, object] = {"architecture": "deepfm", "model": asdict(config)}
    shared = {f: t for f, t in (feature_tables or {}).items() if f != t}
    if shared:
        spec["tables"] = shared
    return json.dumps(spec, sort_keys=True)


def spec_feature_tables(spec: str) -> dict[str, str]:
    """The table each sparse feature of :func:`model_spec`'s JSON looks up.

    Raises ``ValueError`` if the spec names a feature or table badly.
    """
    data = json.loads(spec)
    features = list(data["model"]["sparse_features"])
    shared = data.get("tables", {})
    if not isinstance(shared, dict) or not all(
            f in features and isinstance(t, str) and t for f, t in shared.items()):
        raise ValueError(f"model spec: bad tables {str(shared)[:200]!r}")
    return {f: shared.get(f, f) for f in features}


def model_from_spec(spec: str) -> CTRModel:
    """Build an (untrained) :class:`CTRModel` from :func:`model_spec`'s JSON.

    Raises ``ValueError`` if the spec is not a DeepFM model description.
    """
    data = json.loads(spec)
    if not isinstance(data, dict) or data.get("architecture") != "deepfm":
        raise ValueError(f"unsupported model spec: {spec[:200]!r}")
    # A trainer of an earlier release scales no field (replicas upgrade first).
    return CTRModel(ModelConfig(**{"field_scale": 1.0, **data["model"]}))
