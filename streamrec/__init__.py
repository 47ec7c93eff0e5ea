"""streamrec: a streaming recommender with online training.

The packages: ``ingest`` (events to batches), ``trainer`` (dynamic tables,
model, online loop, parameter sync), ``serving`` (gRPC replicas), ``protos``
(contracts). This package holds what spans them: config, errors, the CLI, and
``native`` (C kernels of the training step and the batcher, built on first use).
"""

from streamrec.config import (
    AppConfig,
    IngestConfig,
    MetricsConfig,
    ModelConfig,
    ServingConfig,
    SyncConfig,
    TableConfig,
    TrainerConfig,
    load_config,
)
from streamrec.errors import (
    CheckpointError,
    ConfigError,
    DecodeError,
    StreamrecError,
    SyncError,
    VersionGapError,
)

__version__ = "0.1.0"

__all__ = [
    "AppConfig",
    "IngestConfig",
    "MetricsConfig",
    "ModelConfig",
    "ServingConfig",
    "SyncConfig",
    "TableConfig",
    "TrainerConfig",
    "load_config",
    "CheckpointError",
    "ConfigError",
    "DecodeError",
    "StreamrecError",
    "SyncError",
    "VersionGapError",
]
