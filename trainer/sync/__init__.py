"""Parameter sync: versioned deltas from the trainer to serving replicas."""

from trainer.sync.delta import ParameterDelta, TableDelta, decode_chunks, encode_chunks
from trainer.sync.publisher import ParameterSource, Publisher
from trainer.sync.sink import DeltaSink, GrpcDeltaSink, MemoryDeltaSink

__all__ = [
    "ParameterDelta",
    "TableDelta",
    "encode_chunks",
    "decode_chunks",
    "Publisher",
    "ParameterSource",
    "DeltaSink",
    "GrpcDeltaSink",
    "MemoryDeltaSink",
]
