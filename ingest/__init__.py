"""Ingestion: decode and validate events, read them from sources, join, batch.

``replay`` (file -> Kafka topic) stays in :mod:`ingest.replay`, so the package
attribute keeps naming the module.
"""

from streamrec.ingest.batch import Batch, Batcher
from streamrec.ingest.deadletter import (
    DeadLetterSink,
    FileDeadLetterSink,
    KafkaDeadLetterSink,
    MemoryDeadLetterSink,
)
from streamrec.ingest.decode import (
    decode_csv_row,
    decode_json,
    decode_protobuf,
    decode_value,
    encode_json,
    encode_protobuf,
)
from streamrec.ingest.event import Event
from streamrec.ingest.feature_audit import AuditedSource, FeatureAudit
from streamrec.ingest.file_source import FileSource
from streamrec.ingest.iter_source import IteratorSource
from streamrec.ingest.joiner import Joiner
from streamrec.ingest.kafka_source import KafkaSource, create_topics
from streamrec.ingest.metrics import IngestMetrics
from streamrec.ingest.schema import FeatureSchema, SchemaScan
from streamrec.ingest.source import DeadLetter, EventSource, MemorySource, SourceBatch

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
