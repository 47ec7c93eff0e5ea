"""Typed configuration: one dataclass per component, nested in :class:`AppConfig`.

Precedence, lowest first: dataclass defaults < TOML file < ``STREAMREC_*``
environment variables < CLI ``--set section.field=value`` overrides.

Environment variables are named ``STREAMREC_<SECTION>_<FIELD>``, for example
``STREAMREC_TRAINER_BATCH_SIZE=512`` or ``STREAMREC_SYNC_TOKEN=s3cret``; they and
``--set`` values are read by :func:`streamrec.config_text.parse_text` (lists as a
TOML array or comma-separated). Per-table settings live in TOML under
``[tables.<name>]`` and fall back to ``[table_defaults]``; a table is named after
its feature, or lists the features that share it (``features = [...]``).

Every dataclass validates itself in ``__post_init__`` and raises
:class:`ConfigError` naming the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrec.config_text import parse_text
from streamrec.errors import ConfigError

__all__ = [
    "IngestConfig",
    "ModelConfig",
    "TableConfig",
    "TrainerConfig",
    "SyncConfig",
    "ServingConfig",
    "MetricsConfig",
    "AppConfig",
    "DelayedFeedback",
    "load_config",
    "SYNC_MAX_MESSAGE_BYTES",
    "MAX_CHUNK_BYTES",
]

# The largest gRPC message a replica's sync server accepts (serving/server.py).
SYNC_MAX_MESSAGE_BYTES = 64 << 20
# The largest sync.max_chunk_bytes: a chunk message is its payload plus up to
# 64 KiB of framing (the sink allows max_chunk_bytes + 64 KiB), and must still
# fit the replica's limit, or every push of a large delta fails with
# RESOURCE_EXHAUSTED.
MAX_CHUNK_BYTES = SYNC_MAX_MESSAGE_BYTES - (64 << 10)

_KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _require(ok: bool, section: str, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{name}={value!r}: {why}")


def _token(section: str, value: str) -> str:
    """A bearer token without surrounding whitespace, checked to be valid gRPC metadata.

    Secrets read from files usually end in a newline; gRPC refuses metadata
    values outside printable ASCII, which would fail every sync push. Spaces
    inside the token are kept (printable ASCII); the value itself is not
    echoed in the error, it is a secret.
    """
    token = value.strip()
    bad = [c for c in token if not " " <= c <= "~"]
    if bad:
        raise ConfigError(f"{section}.token: contains {len(bad)} control or non-ASCII "
                          f"character(s) (first {bad[0]!r}); a token must be printable ASCII")
    return token


class DelayedFeedback(str, enum.Enum):
    """How joined impressions become training examples (clicks come late; see ingest/joiner.py).

    ``wait``: every example waits for its impression's join window to close,
    clicked or not, and leaves in impression order: unbiased, ``join_window_s``
    late. ``fake_negative``: an impression is learned as a negative
    ``fake_negative_delay_s`` after it unless clicked by then, and as a
    positive when its click joins, with importance weights that undo the
    duplication (Ktena et al. 2019, FNW; Yang et al. 2021, ES-DFM): fresh.
    On the synthetic streams in production form it scores served AUC
    0.026-0.045 above ``wait`` (benchmarks/quality.py).
    """

    WAIT = "wait"
    FAKE_NEGATIVE = "fake_negative"


@dataclass
class IngestConfig:
    """Where events come from and how they become training examples."""

    source: str = "kafka"  # kafka | file | memory
    bootstrap_servers: list[str] = field(default_factory=lambda: ["127.0.0.1:9092"])
    topics: list[str] = field(default_factory=lambda: ["streamrec-events"])
    group_id: str = "streamrec-trainer"
    value_format: str = "auto"  # json | protobuf | auto
    # Brokers hold a new group's first join for about the session timeout; a
    # short one makes a restarted trainer resume quickly.
    session_timeout_ms: int = 6000
    # How every Kafka client connects (consumer, dead-letter producer, lag
    # reader, replay): PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. ssl_cafile
    # verifies the brokers (default: the system's CAs); ssl_certfile and
    # ssl_keyfile (PEM) authenticate the client by TLS; sasl_mechanism PLAIN,
    # SCRAM-SHA-256 or SCRAM-SHA-512 with sasl_username and sasl_password (a
    # secret: set it from the environment, STREAMREC_INGEST_SASL_PASSWORD).
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    # read_committed: records of aborted transactions (a transactional
    # producer's retries) are never read, so never learned; on topics without
    # transactions it reads the same records.
    isolation_level: str = "read_committed"
    poll_timeout_ms: int = 200
    max_poll_records: int = 4096
    path: str = ""  # for source = "file": a .jsonl or .csv file
    dead_letter_path: str = ""  # JSONL file of rejected records; "" keeps them in memory
    dead_letter_topic: str = ""  # Kafka topic for rejected records (source = kafka)
    # Joiner: an impression is positive when one of these actions for the same
    # (request_id, item_id) arrives within join_window_s of event time.
    action_types: list[str] = field(default_factory=lambda: ["click", "like", "share", "purchase"])
    # Event types (example, impression, action_types) match without regard to
    # case ("Click" is a click); true: only as written. An event of any other
    # type is a dead letter (kind unknown_type).
    types_case_sensitive: bool = False
    join_window_s: float = 300.0
    # Keep each negative with this probability; the trainer weighs kept ones
    # 1/rate in the loss, so predictions stay calibrated to the full stream.
    negative_sample_rate: float = 1.0
    # Impressions held waiting for actions (memory: ~1 KB each); beyond it the
    # oldest is labelled negative early (streamrec_ingest_joiner_overflow_total).
    # Size it above the impressions one join window brings.
    join_max_pending: int = 1_000_000
    # How far ahead of this machine's clock an event's time may move the
    # joiner's clock (and so close join windows): 0, not at all, guards against
    # a producer's clock or units running ahead; raise it for producers whose
    # clocks run ahead of this machine's.
    max_clock_skew_s: float = 0.0
    # How the delay of clicks behind their impressions is handled in training.
    delayed_feedback: DelayedFeedback = DelayedFeedback.FAKE_NEGATIVE
    # fake_negative: how long an impression waits for its click before it is
    # learned as a negative (0: at once, FNW; > 0: ES-DFM's elapsed time).
    fake_negative_delay_s: float = 0.0

    def __post_init__(self) -> None:
        s = "ingest"
        _require(self.source in ("kafka", "file", "memory"), s, "source", self.source,
                 "must be kafka, file or memory")
        _require(self.value_format in ("json", "protobuf", "auto"), s, "value_format",
                 self.value_format, "must be json, protobuf or auto")
        # Kafka's own rule; kafka-python checks it only when a name is first
        # used, with a ValueError that ends the trainer mid-run (the dead-letter
        # topic: at the first malformed record, again after every restart).
        named = [("topics", topic) for topic in self.topics]
        if self.dead_letter_topic:
            named.append(("dead_letter_topic", self.dead_letter_topic))
        for name, topic in named:
            _require(bool(_KAFKA_TOPIC.fullmatch(topic)) and topic not in (".", ".."), s, name,
                     getattr(self, name),
                     f"{topic!r} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)")
        _require(bool(self.topics) or self.source != "kafka", s, "topics", self.topics,
                 "at least one topic is needed for source = kafka")
        _require(bool(self.bootstrap_servers) or self.source != "kafka", s,
                 "bootstrap_servers", self.bootstrap_servers, "needed for source = kafka")
        _require(bool(self.path) or self.source != "file", s, "path", self.path,
                 "the event file to read is needed for source = file")
        self._check_security()
        _require(self.session_timeout_ms >= 1000, s, "session_timeout_ms",
                 self.session_timeout_ms, "must be >= 1000")
        _require(self.poll_timeout_ms >= 0, s, "poll_timeout_ms", self.poll_timeout_ms,
                 "must be >= 0")
        _require(self.max_poll_records >= 1, s, "max_poll_records", self.max_poll_records,
                 "must be >= 1")
        _require(self.join_window_s > 0, s, "join_window_s", self.join_window_s, "must be > 0")
        _require(0 < self.negative_sample_rate <= 1, s, "negative_sample_rate",
                 self.negative_sample_rate, "must be in (0, 1]")
        _require(self.join_max_pending >= 1, s, "join_max_pending", self.join_max_pending,
                 "must be >= 1")
        _require(math.isfinite(self.max_clock_skew_s) and self.max_clock_skew_s >= 0, s,
                 "max_clock_skew_s", self.max_clock_skew_s, "must be >= 0")
        choices = [mode.value for mode in DelayedFeedback]
        _require(self.delayed_feedback in choices, s, "delayed_feedback", self.delayed_feedback,
                 f"must be one of {', '.join(choices)}")
        self.delayed_feedback = DelayedFeedback(self.delayed_feedback)
        fold = (lambda t: t) if self.types_case_sensitive else str.lower
        _require(all(isinstance(t, str) and t.strip() == t and t for t in self.action_types),
                 s, "action_types", self.action_types, "each must be a non-empty word")
        _require(not {fold(t) for t in self.action_types} & {"example", "impression"}, s,
                 "action_types", self.action_types, "example and impression are not actions")
        _require(len({fold(t) for t in self.action_types}) == len(self.action_types), s,
                 "action_types", self.action_types,
                 "listed twice" + ("" if self.types_case_sensitive else
                                   " (types match without regard to case: "
                                   "ingest.types_case_sensitive)"))
        _require(0 <= self.fake_negative_delay_s < self.join_window_s, s,
                 "fake_negative_delay_s", self.fake_negative_delay_s,
                 "must be >= 0 and below join_window_s")

    def _check_security(self) -> None:
        s = "ingest"
        protocols = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
        _require(self.security_protocol in protocols, s, "security_protocol",
                 self.security_protocol, f"must be one of {', '.join(protocols)}")
        _require(self.isolation_level in ("read_committed", "read_uncommitted"), s,
                 "isolation_level", self.isolation_level,
                 "must be read_committed or read_uncommitted")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            _require(not path or os.path.isfile(path), s, name, path, "no such file")
            _require(not path or "SSL" in self.security_protocol, s, name, path,
                     f"TLS files need security_protocol SSL or SASL_SSL, not "
                     f"{self.security_protocol}")
        _require(bool(self.ssl_certfile) == bool(self.ssl_keyfile), s, "ssl_keyfile",
                 self.ssl_keyfile, "ssl_certfile and ssl_keyfile go together")
        mechanisms = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
        _require(self.sasl_mechanism in mechanisms, s, "sasl_mechanism", self.sasl_mechanism,
                 f"must be one of {', '.join(mechanisms)}")
        if self.security_protocol.startswith("SASL"):
            _require(bool(self.sasl_username), s, "sasl_username", self.sasl_username,
                     f"needed for security_protocol {self.security_protocol}")
            if not self.sasl_password:  # (the value is a secret: not echoed)
                raise ConfigError(f"{s}.sasl_password: needed for security_protocol "
                                  f"{self.security_protocol}")


DEFAULT_HISTORY = ("user_id", "item_id")


class _DefaultHistory(list):  # type: ignore[type-arg]
    """Marks history_features as not set by the user (resolved against sparse_features)."""


class _DefaultWide(list):  # type: ignore[type-arg]
    """Marks wide_terms as not set by the user: resolved against sparse_features
    each time the config is built, so a model given the stream's features
    (``streamrec evaluate``) gets the terms of those."""


# Wide terms cross every pair of features up to this many sparse features, and
# a model's rows take their full step up to this many fields (benchmarks/
# many_features.py: past it, pairs cost their F^2 keys and return nothing, and
# a full step overfits the fields that carry no signal).
MANY_FEATURES = 12


def default_wide_terms(sparse_features: list[str]) -> list[str]:
    """Every sparse feature, and up to :data:`MANY_FEATURES` of them every pair
    crossed (Vowpal Wabbit's ``-q ::``)."""
    if len(sparse_features) > MANY_FEATURES:
        return list(sparse_features)
    pairs = [f"{a}*{b}" for i, a in enumerate(sparse_features) for b in sparse_features[i + 1:]]
    return [*sparse_features, *pairs]


def default_field_scale(sparse_features: list[str]) -> float:
    """1 up to :data:`MANY_FEATURES` sparse features, then ``MANY_FEATURES / F``."""
    return min(1.0, MANY_FEATURES / max(1, len(sparse_features)))


class _DefaultScale(float):
    """Marks field_scale as not set by the user (resolved against sparse_features)."""


class _Unset(list):  # type: ignore[type-arg]
    """Marks a feature list as the default, not set by the user (see ModelConfig)."""
@dataclass
class ModelConfig:
    """The CTR model: which features it reads and its shape."""

    # Each sparse feature gets its own embedding table, keyed by raw 64-bit ids.
    # "user_id" and "item_id" read the event's ids; others read event features.
    # Left unset (in the file, the environment and --set), `streamrec evaluate`
    # takes every feature its event file carries (ingest/schema.py) instead.
    sparse_features: list[str] = field(default_factory=lambda: _Unset(["user_id", "item_id"]))
    dense_features: list[str] = field(default_factory=lambda: _Unset())
    # The default is an FM (first-order + pairwise interactions + one linear
    # layer over the factors), whose step runs on the torch operators of
    # streamrec/native; hidden layers make it a DeepFM (e.g. [64, 32]), for logs
    # with higher-order interactions, at about half the events/s. On every
    # synthetic stream of benchmarks/quality the FM is as good.
    embedding_dim: int = 8
    hidden: list[int] = field(default_factory=list)
    # Per-id outcome counts as features, exact per event within a batch
    # (streamrec/model/history.py); each must also be a sparse feature. By default
    # user_id and item_id, where they are sparse features: on every synthetic
    # stream they add 0.008-0.033 progressive AUC. "" turns them off.
    history_features: list[str] = field(default_factory=lambda: _DefaultHistory(DEFAULT_HISTORY))
    history_cap: float = 200.0
    history_strength: float = 10.0
    # In-batch adaptation (streamrec/model/adapt.py): each training example's
    # logit also gets what the batch's earlier examples sharing a key with it
    # taught, per term (a feature, or features crossed with "*"), e.g.
    # ["user_id", "user_id*genre"]: +0.02 test-then-train AUC on the real logs of
    # benchmarks/real_logs.py. Off by default: a replica has no labels to adapt
    # with, so the scores it improves are ones serving never shows.
    in_batch_terms: list[str] = field(default_factory=list)
    in_batch_strength: float = 10.0  # smoothing: n earlier examples weigh n / (n + strength)
    in_batch_weight: float = 3.0  # each term's initial weight (then learned)
    # Wide terms (streamrec/model/wide.py): a logistic regression over features
    # and crosses of them ("*"), e.g. ["user_id", "user_id*genres"], whose
    # weights learn from each outcome as it arrives (in serving's order on a
    # joined stream) and reach replicas with the next delta. By default every
    # sparse feature and every pair of them (as Vowpal Wabbit's -q ::): +0.016
    # served AUC on MovieLens 100K in production form (benchmarks/real_logs.py).
    # "" turns them off.
    wide_terms: list[str] = field(default_factory=_DefaultWide)
    wide_lr: float = 1.5  # Adagrad: w -= wide_lr * g / (K * sqrt(1 + sum of g^2)), K keys
    # Every embedding row is multiplied by this in the model (so a row's step
    # moves the logit this much less, and the FM's pairs of it the square). By
    # default 1 up to 12 sparse features, then 12 / their number: an example's
    # logit sums every field and every pair of fields, so without it a log
    # with many features that carry little signal learns their noise at full
    # step (benchmarks/many_features.py).
    field_scale: float = field(default_factory=lambda: _DefaultScale(0.0))

    @property
    def wide_terms_default(self) -> bool:
        """Whether wide_terms are the default ones (not set by the user)."""
        return isinstance(self.wide_terms, _DefaultWide)

    @property
    def features_configured(self) -> bool:
        """False when neither feature list was set: the model may take the stream's."""
        return not (isinstance(self.sparse_features, _Unset)
                    and isinstance(self.dense_features, _Unset))

    def __post_init__(self) -> None:
        s = "model"
        if isinstance(self.history_features, _DefaultHistory):
            self.history_features = [f for f in DEFAULT_HISTORY if f in self.sparse_features]
        if isinstance(self.wide_terms, _DefaultWide):
            self.wide_terms = _DefaultWide(default_wide_terms(self.sparse_features))
        if isinstance(self.field_scale, _DefaultScale):
            self.field_scale = _DefaultScale(default_field_scale(self.sparse_features))
        _require(len(self.sparse_features) >= 1, s, "sparse_features", self.sparse_features,
                 "at least one sparse feature is needed")
        _require(len(set(self.sparse_features)) == len(self.sparse_features), s,
                 "sparse_features", self.sparse_features, "names must be unique")
        _require(not set(self.sparse_features) & set(self.dense_features), s,
                 "dense_features", self.dense_features, "a feature cannot be both sparse and dense")
        _require(1 <= self.embedding_dim <= 1024, s, "embedding_dim", self.embedding_dim,
                 "must be in [1, 1024]")
        _require(all(h >= 1 for h in self.hidden), s, "hidden", self.hidden,
                 "layer widths must be >= 1")
        _require(set(self.history_features) <= set(self.sparse_features), s,
                 "history_features", self.history_features,
                 "each history feature must be one of model.sparse_features")
        _require(self.history_cap >= 1, s, "history_cap", self.history_cap, "must be >= 1")
        _require(self.history_strength >= 1e-6, s, "history_strength", self.history_strength,
                 "must be >= 1e-6 (smaller underflows: every loss NaN)")
        self._check_terms("in_batch_terms", self.in_batch_terms)
        self._check_terms("wide_terms", self.wide_terms)
        _require(math.isfinite(self.wide_lr) and self.wide_lr > 0, s, "wide_lr", self.wide_lr,
                 "must be > 0")
        _require(math.isfinite(self.field_scale) and 0 < self.field_scale <= 1, s,
                 "field_scale", self.field_scale, "must be in (0, 1]")
        _require(self.in_batch_strength > 0, s, "in_batch_strength", self.in_batch_strength,
                 "must be > 0")
        _require(math.isfinite(self.in_batch_weight), s, "in_batch_weight",
                 self.in_batch_weight, "must be finite")

    def _check_terms(self, name: str, terms: list[str]) -> None:
        """Terms are sparse features, or several crossed with "*", each listed once."""
        for term in terms:
            parts = term.split("*")
            _require(all(p in self.sparse_features for p in parts), "model", name, terms,
                     f"term {term!r}: each feature of a term must be one of "
                     "model.sparse_features (cross features with '*')")
            _require(len(set(parts)) == len(parts), "model", name, terms,
                     f"term {term!r} names a feature twice")
        _require(len(set(terms)) == len(terms), "model", name, terms, "terms must be unique")


@dataclass
class TableConfig:
    """One embedding table (Monolith-style dynamic table)."""

    # Frequency filter: an id gets a row after it has been seen min_count times
    # (0 or 1 = admit at first sight).
    min_count: int = 1
    # Rows unseen for ttl_s of event time are evicted (0 = never).
    ttl_s: float = 0.0
    shards: int = 1
    initial_capacity: int = 4096
    # Bounded capacity (0 = grow without bound). When full, new ids read the
    # OOV row until expiry frees rows.
    max_rows: int = 0
    lr: float = 0.02
    init_std: float = 0.01
    # Count-min sketch for the frequency filter: width per row, and depth.
    filter_width: int = 1 << 20
    filter_depth: int = 2
    # OptEmbed row pruning (Lyu et al. 2022): a learnable threshold t on each
    # row's L1 norm, trained with the regulariser prune_alpha * exp(-t);
    # rows under the threshold read as zero and are freed. 0 = off.
    prune_alpha: float = 0.0
    # The sparse features that look this table up, as torchrec's feature_names:
    # an id seen in any of them is one row. Empty: the feature the table is named after.
    features: list[str] = field(default_factory=list)
    # A row is freed for being under the threshold only once it is this old
    # (event time since admission): a new id's row starts small and needs a
    # few updates to show whether it is worth keeping.
    prune_grace_s: float = 300.0

    def __post_init__(self) -> None:
        s = "table"
        _require(self.min_count >= 0, s, "min_count", self.min_count, "must be >= 0")
        _require(self.ttl_s >= 0, s, "ttl_s", self.ttl_s, "must be >= 0")
        _require(1 <= self.shards <= 1024, s, "shards", self.shards, "must be in [1, 1024]")
        _require(self.initial_capacity >= 16, s, "initial_capacity", self.initial_capacity,
                 "must be >= 16")
        _require(self.max_rows >= 0, s, "max_rows", self.max_rows, "must be >= 0")
        _require(self.max_rows == 0 or self.max_rows >= self.shards, s, "max_rows",
                 self.max_rows, f"must be 0 (unbounded) or at least shards ({self.shards}): "
                 "each shard holds max_rows // shards rows")
        _require(self.prune_grace_s >= 0, s, "prune_grace_s", self.prune_grace_s, "must be >= 0")
        _require(self.lr > 0, s, "lr", self.lr, "must be > 0")
        _require(self.init_std >= 0, s, "init_std", self.init_std, "must be >= 0")
        _require(self.filter_width >= 64, s, "filter_width", self.filter_width, "must be >= 64")
        # The sketch's int16 counters saturate at 32767 and decay keeps them
        # under ~filter_width: a larger min_count would never admit an id.
        _require(self.min_count <= min(32767, self.filter_width), s, "min_count",
                 self.min_count, f"must be <= min(32767, filter_width={self.filter_width})")
        _require(1 <= self.filter_depth <= 8, s, "filter_depth", self.filter_depth,
                 "must be in [1, 8]")
        _require(self.prune_alpha >= 0, s, "prune_alpha", self.prune_alpha, "must be >= 0")
        _require(all(isinstance(f, str) and f for f in self.features), s, "features",
                 self.features, "must be feature names")
        _require(len(set(self.features)) == len(self.features), s, "features", self.features,
                 "names a feature twice")


@dataclass
class TrainerConfig:
    """The online training loop."""

    # Steady-state mini-batch. A cold model starts at warmup_batch_size and
    # the batch grows with what it has learned (a quarter of the examples so
    # far) up to batch_size: early events see a model updated every few dozen
    # events, as a per-event learner would, and the steady state runs at full
    # batch throughput (0 = no warm-up). See benchmarks/quality.py
    # (results/quality_sweep.json): 4096 gains 0.001-0.003 AUC over 8192 at
    # about the same speed, 2048 0.002-0.005 at 0.7-0.8x; a warm-up from 128
    # gives the same AUC as from 1024, from 4096 up to 0.013 less, none 0.02 less.
    batch_size: int = 4096
    warmup_batch_size: int = 1024
    # A partial batch is trained once its oldest example has waited this long
    # (wall time), so a slow stream is not held back until a full batch arrives:
    # at low traffic, the part of freshness that batching adds.
    max_batch_delay_s: float = 0.2
    dense_lr: float = 0.02
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    checkpoint_dir: str = ""  # "" = no checkpoints
    checkpoint_interval_s: float = 60.0
    log_interval_s: float = 5.0

    def __post_init__(self) -> None:
        s = "trainer"
        _require(1 <= self.batch_size <= 1 << 20, s, "batch_size", self.batch_size,
                 "must be in [1, 1048576]")
        _require(self.warmup_batch_size >= 0, s, "warmup_batch_size", self.warmup_batch_size,
                 "must be >= 0 (0 = no warm-up)")
        _require(self.max_batch_delay_s > 0, s, "max_batch_delay_s", self.max_batch_delay_s,
                 "must be > 0")
        _require(self.dense_lr > 0, s, "dense_lr", self.dense_lr, "must be > 0")
        _require(self.threads >= 0, s, "threads", self.threads, "must be >= 0")
        _require(0 <= self.seed < 1 << 63, s, "seed", self.seed, "must be in [0, 2**63)")
        _require(self.checkpoint_interval_s > 0, s, "checkpoint_interval_s",
                 self.checkpoint_interval_s, "must be > 0")
        _require(self.log_interval_s > 0, s, "log_interval_s", self.log_interval_s,
                 "must be > 0")


@dataclass
class SyncConfig:
    """Parameter push from trainer to serving replicas."""

    replicas: list[str] = field(default_factory=list)  # host:port of each sync port
    # A training step triggers a push, at most every min_interval_s; without
    # steps a round still runs every interval_s (which also bounds how long a
    # round waits for a slow replica).
    interval_s: float = 1.0
    min_interval_s: float = 0.1
    token: str = ""
    max_chunk_bytes: int = 1 << 20
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        s = "sync"
        self.token = _token(s, self.token)
        _require(self.interval_s > 0, s, "interval_s", self.interval_s, "must be > 0")
        _require(0 <= self.min_interval_s <= self.interval_s, s, "min_interval_s",
                 self.min_interval_s, f"must be in [0, interval_s={self.interval_s}]")
        _require(self.max_chunk_bytes >= 65536, s, "max_chunk_bytes", self.max_chunk_bytes,
                 "must be >= 65536 (one dense weight matrix travels whole in a chunk)")
        _require(self.max_chunk_bytes <= MAX_CHUNK_BYTES, s, "max_chunk_bytes",
                 self.max_chunk_bytes, f"must be <= {MAX_CHUNK_BYTES} (64 MiB - 64 KiB): "
                 "a replica accepts sync messages of at most 64 MiB")
        _require(all(":" in r for r in self.replicas), s, "replicas", self.replicas,
                 "each replica must be host:port")
        _require(self.timeout_s > 0, s, "timeout_s", self.timeout_s, "must be > 0")


@dataclass
class ServingConfig:
    """A serving replica: public port for Predict/Recommend, private sync port."""

    host: str = "127.0.0.1"
    port: int = 50051
    sync_host: str = "127.0.0.1"
    sync_port: int = 50052
    token: str = ""  # bearer token the sync port requires ("" = no auth, dev only)
    max_candidates: int = 10000
    # Feature ids one request may expand to: request-level (shared) features
    # are copied into every candidate's row, so 400 candidates x 20,000 shared
    # ids (a 53 kB request) would build 8M ids. Counted before anything is built.
    max_request_ids: int = 1_000_000
    # The public port's largest request message (gRPC's receive limit); a
    # larger one is refused with RESOURCE_EXHAUSTED.
    max_request_bytes: int = 4 << 20
    # Admission control (serving/admission.py): at most max_concurrent requests
    # score at once and max_queue more wait; past that a request is refused at
    # once with RESOURCE_EXHAUSTED (counted in streamrec_serving_shed_total), and
    # one whose deadline passes while it waits is not scored.
    max_concurrent: int = 2
    max_queue: int = 16
    # Threads that take calls off the public port, health checks included; at
    # most this many calls are in the process at once (gRPC refuses the next
    # with RESOURCE_EXHAUSTED itself), so it must exceed the two above.
    max_workers: int = 32
    # On SIGTERM: report NOT_SERVING but keep answering for shutdown_delay_s, so
    # load balancers and readiness probes take the replica out first; then
    # stop, letting in-flight calls finish for grace_s.
    shutdown_delay_s: float = 2.0
    grace_s: float = 5.0
    # Worker processes behind the public port (each a full replica; the kernel
    # spreads connections over them, SO_REUSEPORT), fed by the one sync port.
    # 0 = one per CPU this process may use; 1 = a single process, no fan-out.
    # The admission limits above hold per worker.
    workers: int = 0

    def __post_init__(self) -> None:
        s = "serving"
        self.token = _token(s, self.token)
        for name in ("port", "sync_port"):
            v = getattr(self, name)
            _require(0 <= v <= 65535, s, name, v, "must be in [0, 65535]")
        _require(self.max_candidates >= 1, s, "max_candidates", self.max_candidates,
                 "must be >= 1")
        _require(self.max_request_ids >= 1, s, "max_request_ids", self.max_request_ids,
                 "must be >= 1")
        # gRPC takes the limit as a signed 32-bit integer.
        _require(1024 <= self.max_request_bytes <= 2**31 - 1, s, "max_request_bytes",
                 self.max_request_bytes, "must be in [1024, 2**31 - 1]")
        _require(self.max_concurrent >= 1, s, "max_concurrent", self.max_concurrent,
                 "must be >= 1")
        _require(self.max_queue >= 0, s, "max_queue", self.max_queue, "must be >= 0")
        _require(self.max_workers > self.max_concurrent + self.max_queue, s, "max_workers",
                 self.max_workers, f"must exceed max_concurrent + max_queue "
                 f"({self.max_concurrent} + {self.max_queue}): the rest answer health "
                 f"checks and refusals")
        _require(math.isfinite(self.shutdown_delay_s) and self.shutdown_delay_s >= 0, s,
                 "shutdown_delay_s", self.shutdown_delay_s, "must be a finite number >= 0")
        _require(self.grace_s >= 0, s, "grace_s", self.grace_s, "must be >= 0")
        _require(0 <= self.workers <= 256, s, "workers", self.workers,
                 "must be in [0, 256] (0 = one per CPU this process may use)")

    def worker_count(self) -> int:
        """Worker processes to run: ``workers``, or the CPUs this process may use if 0."""
        return self.workers or len(os.sched_getaffinity(0))


@dataclass
class MetricsConfig:
    """Prometheus /metrics endpoint of this process."""

    host: str = "127.0.0.1"
    port: int = 9100  # 0 = pick a free port; -1 = do not serve /metrics

    def __post_init__(self) -> None:
        _require(-1 <= self.port <= 65535, "metrics", "port", self.port,
                 "must be -1 (off), 0 (any) or a port")


@dataclass
class AppConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    table_defaults: TableConfig = field(default_factory=TableConfig)
    tables: dict[str, TableConfig] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        _require(not self.table_defaults.features, "table_defaults", "features",
                 self.table_defaults.features, "set a table's features in [tables.<name>]")
        unknown = {n for n, t in self.tables.items() if not t.features} \
            - set(self.model.sparse_features)
        _require(not unknown, "tables", ",".join(sorted(unknown)), sorted(unknown),
                 "per-table settings name no sparse feature in model.sparse_features "
                 "(or list the features that share the table: features = [...])")
        self._shared_table_of()  # validates the features lists

    def _shared_table_of(self) -> dict[str, str]:
        """Each feature a table lists in ``features`` (or its own table), by the table's name."""
        sparse = set(self.model.sparse_features)
        owner: dict[str, str] = {}
        for name, table in self.tables.items():
            for feature in table.features or [name]:
                _require(feature in sparse, f"tables.{name}", "features", table.features,
                         f"{feature!r} is not in model.sparse_features")
                _require(feature not in owner, f"tables.{name}", "features", table.features,
                         f"{feature!r} already looks up table {owner.get(feature)!r}: a "
                         f"feature looks up one table")
                owner[feature] = name
        for name, table in self.tables.items():
            _require(name not in sparse or not table.features or name in table.features,
                     f"tables.{name}", "features", table.features,
                     f"the table is named after feature {name!r} but does not list it; "
                     f"name the table otherwise")
        return owner

    def feature_tables(self) -> dict[str, str]:
        """The table each sparse feature looks up (its own, named after it, by default)."""
        owner = self._shared_table_of()
        return {f: owner.get(f, f) for f in self.model.sparse_features}

    def table(self, name: str) -> TableConfig:
        """The effective config of table ``name``, or of the table feature ``name`` looks up."""
        return self.tables.get(self._shared_table_of().get(name, name), self.table_defaults)


_SECTIONS = ("ingest", "model", "table_defaults", "trainer", "sync", "serving", "metrics")


def _coerce(section: str, name: str, tp: Any, value: Any) -> Any:
    """Convert a TOML/env/CLI value to the field's declared type."""
    origin = typing.get_origin(tp)
    try:
        if origin is list:
            (item_tp,) = typing.get_args(tp)
            if isinstance(value, str):
                value = parse_text(f"{section}.{name}", tp, value)
            if not isinstance(value, list):
                raise TypeError("expected a list")
            return [_coerce(section, name, item_tp, v) for v in value]
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError("expected true or false")
            if not isinstance(value, bool):
                raise TypeError("expected a boolean")
            return value
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError("expected an integer")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise TypeError("expected a number")
            number = float(value)
            # inf passes every "> 0" check and overflows later, in int(inf * 1000).
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if tp is str:
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            choices = [member.value for member in tp]
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}")
            return tp(value)
    except ConfigError:
        raise  # an item's error already names the field
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{section}.{name}={value!r}: {e}") from None
    raise ConfigError(f"{section}.{name}: unsupported field type {tp!r}")


def _table(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a TOML table (section), or ConfigError naming ``where``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}={value!r}: expected a table of fields ([{where}]), "
                          f"got a {type(value).__name__}")
    return dict(value)


def _from_text(cls: type, section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Environment / --set values of ``cls``'s fields, read by :func:`parse_text`."""
    hints = typing.get_type_hints(cls)
    return {k: parse_text(f"{section}.{k}", hints[k], v) if isinstance(v, str) and k in hints
            else v for k, v in values.items()}


def _build(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(section, k, hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(AppConfig)
    return {name: hints[name] for name in _SECTIONS}


# STREAMREC_* variables that are not config fields: the config file's path.
_NOT_CONFIG = ("config",)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    types_ = _section_types()
    for key, value in env.items():
        if not key.startswith("STREAMREC_"):
            continue
        rest = key[len("STREAMREC_"):].lower()
        for section in sorted(types_, key=len, reverse=True):
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1:]] = value
                break
        else:
            if rest not in _NOT_CONFIG:
                raise ConfigError(f"{key}: names no config section ({', '.join(_SECTIONS)})")
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AppConfig:
    """Load the app config from a TOML file (``path``, else ``$STREAMREC_CONFIG``), the
    environment and CLI overrides.

    ``overrides`` maps ``"section.field"`` to a value (strings are coerced like
    environment variables). Raises :class:`ConfigError` on any invalid value.
    """
    raw: dict[str, Any] = {}
    if not path:
        path = (os.environ if env is None else env).get("STREAMREC_CONFIG") or None
    if path:
        try:
            # TOML files are UTF-8 by definition, whatever the locale says.
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except OSError as e:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    known = set(_SECTIONS) | {"tables"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(known)}")
    layered: dict[str, dict[str, Any]] = {s: _table(raw.get(s, {}), s) for s in _SECTIONS}
    types_ = _section_types()
    for section, values in _env_overrides(os.environ if env is None else env).items():
        layered[section].update(_from_text(types_[section], section, values))
    table_raw: dict[str, dict[str, Any]] = {
        feature: _table(values, f"tables.{feature}")
        for feature, values in _table(raw.get("tables", {}), "tables").items()}
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        if section == "tables":
            feature, _, name = name.partition(".")
            table_raw.setdefault(feature, {}).update(
                _from_text(TableConfig, f"tables.{feature}", {name: value}))
        elif section in layered and name:
            layered[section].update(_from_text(types_[section], section, {name: value}))
        else:
            raise ConfigError(f"override {dotted!r}: expected section.field with section in "
                              f"{', '.join(_SECTIONS)} or tables.<name>.field")
    built = {s: _build(types_[s], s, layered[s]) for s in _SECTIONS}
    defaults = dataclasses.asdict(built["table_defaults"])
    tables = {
        feature: _build(TableConfig, f"tables.{feature}", {**defaults, **values})
        for feature, values in table_raw.items()
    }
    return AppConfig(tables=tables, **built)

