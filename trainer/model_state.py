"""What a trainer learns, built from the model and table configs.

:func:`build_model_state` makes the dense CTR model, the embedding tables
(one per sparse feature unless features share one), the history-count tables
(both sharded across ranks under a distributed collective), the wide terms'
tables and the embedding collection over them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from streamrec.config import ModelConfig, TableConfig
from streamrec.errors import ConfigError
from streamrec.model.ctr import CTRModel, model_spec
from streamrec.model.embedding import DynamicEmbeddingCollection
from streamrec.model.history import HistoryFeatures, history_table_name
from streamrec.model.tables.base import EmbeddingTable, make_tables
from streamrec.model.wide import WideTerms, parse_terms, wide_table_name
from streamrec.model.tables.distributed import DistributedTableStore
from streamrec.trainer.collective import Collective

__all__ = ["ModelState", "build_model_state"]



@dataclass
class ModelState:
    """The dense model and every table (embeddings and history counts alike)."""

    model: CTRModel
    features: list[str]  # the sparse features
    dense_features: list[str]
    tables: dict[str, EmbeddingTable]  # synced, expired and checkpointed alike
    embeddings: DynamicEmbeddingCollection
    history: HistoryFeatures
    wide: WideTerms
    spec: str  # model_spec(): what a checkpoint or a replica must match


def build_model_state(model: ModelConfig, tables: Callable[[str], TableConfig], seed: int,
                      collective: Collective | None = None,
                      feature_tables: Mapping[str, str] | None = None) -> ModelState:
    """The model ``model`` describes, each table configured by ``tables(name)``.

    ``feature_tables`` maps each sparse feature to the table it looks up
    (``AppConfig.feature_tables``; default: a table of its own, named after it).

    Raises :class:`ConfigError` for model settings a distributed collective
    does not support (in-batch terms).
    """
    distributed = collective is not None and collective.distributed
    torch.manual_seed(seed)
    dense = CTRModel(model)
    features = list(model.sparse_features)
    feature_tables = dict(feature_tables or {f: f for f in features})
    table_names = list(dict.fromkeys(feature_tables.values()))
    row_dim = dense.row_dim
    if distributed:
        assert collective is not None
        if model.in_batch_terms:
            raise ConfigError("model.in_batch_terms: not supported with distributed tables "
                              "yet (each rank sees only its slice of the batch); set it to "
                              "an empty list")
        # One store for every table: a step's lookup is one exchange of ids.
        store = DistributedTableStore(table_names, row_dim, tables, seed=seed,
                                      group=collective.group)
        embedding_tables: dict[str, EmbeddingTable] = dict(store.tables)
    else:
        embedding_tables = make_tables(table_names, row_dim, tables, seed=seed)

    def counter_tables(owner: Mapping[str, str]) -> dict[str, EmbeddingTable]:
        """Tables of ``[2]`` rows starting at zero, each configured like the feature
        ``owner[name]`` (same admission, same expiry); sharded in one store on ranks."""
        def config_of(name: str) -> TableConfig:
            return dataclasses.replace(tables(owner[name]), init_std=0.0)

        if distributed and owner and collective is not None:
            return dict(DistributedTableStore(list(owner), 2, config_of, seed=seed,
                                              group=collective.group).tables)
        return dict(make_tables(list(owner), 2, config_of, seed=seed))

    # History counts start at zero, not at random values: an id's first example
    # must see n = c = 0, as serving does.
    history_features = {history_table_name(f): f for f in model.history_features}
    history_tables = counter_tables(history_features)
    # A wide term's table is configured like its first feature's; its rows
    # (weight, sum of squared gradients) start at zero.
    terms = parse_terms(model.wide_terms)
    wide_tables = counter_tables({wide_table_name(t): t[0] for t in terms})
    wide = WideTerms(terms, wide_tables, lr=model.wide_lr, collective=collective)
    embeddings = DynamicEmbeddingCollection(
        embedding_tables, {t: tables(t).prune_alpha for t in table_names},
        features=feature_tables)
    history = HistoryFeatures(model.history_features, history_tables, cap=model.history_cap,
                              strength=model.history_strength)
    return ModelState(dense, features, list(model.dense_features),
                      {**embedding_tables, **history_tables, **wide_tables}, embeddings,
                      history, wide, model_spec(model, feature_tables))
