"""Ingestion: decode and validate events, read them from sources, join, batch.

``replay`` (file -> Kafka topic) stays in :mod:`ingest.replay`, so the package
attribute keeps naming the module.
"""

from ingest.batch import Batch, Batcher
from ingest.deadletter import (
    DeadLetterSink,
    FileDeadLetterSink,
    KafkaDeadLetterSink,
    MemoryDeadLetterSink,
)
from ingest.decode import (
    decode_csv_row,
    decode_json,
    decode_protobuf,
    decode_value,
    encode_json,
    encode_protobuf,
)
from ingest.event import Event
from ingest.feature_audit import AuditedSource, FeatureAudit
from ingest.file_source import FileSource
from ingest.iter_source import IteratorSource
from ingest.joiner import Joiner
from ingest.kafka_source import KafkaSource, create_topics
from ingest.metrics import IngestMetrics
from ingest.schema import FeatureSchema, SchemaScan
from ingest.source import DeadLetter, EventSource, MemorySource, SourceBatch

__all__ = [
    "AuditedSource",
    "Batch",
    "Batcher",
    "DeadLetter",
    "DeadLetterSink",
    "Event",
    "EventSource",
    "FeatureAudit",
    "FeatureSchema",
    "FileDeadLetterSink",
    "FileSource",
    "IngestMetrics",
    "IteratorSource",
    "Joiner",
    "KafkaDeadLetterSink",
    "KafkaSource",
    "MemoryDeadLetterSink",
    "MemorySource",
    "SchemaScan",
    "SourceBatch",
    "create_topics",
    "decode_csv_row",
    "decode_json",
    "decode_protobuf",
    "decode_value",
    "encode_json",
    "encode_protobuf",
]
