"""streamrec: a streaming recommender with online training.

Subpackages: ``ingest`` (events to batches), ``trainer`` (the online step, loop,
checkpoints, parameter publishing), ``serving`` (gRPC replicas), ``protos`` (the
contracts), ``native`` (compiled operators); ``client`` is the thin gRPC client,
``cli`` the command line. This module exposes the configuration and the error tree.
"""

from streamrec._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "AppConfig": "streamrec.config",
    "IngestConfig": "streamrec.config",
    "MetricsConfig": "streamrec.config",
    "ModelConfig": "streamrec.config",
    "ServingConfig": "streamrec.config",
    "SyncConfig": "streamrec.config",
    "TableConfig": "streamrec.config",
    "TrainerConfig": "streamrec.config",
    "load_config": "streamrec.config",
    "CheckpointError": "streamrec.errors",
    "ConfigError": "streamrec.errors",
    "DecodeError": "streamrec.errors",
    "StreamrecError": "streamrec.errors",
    "SyncError": "streamrec.errors",
    "VersionGapError": "streamrec.errors",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
