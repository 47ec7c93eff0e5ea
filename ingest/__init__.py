"""Ingestion: decode and validate events, read them from sources, join, batch."""

from streamrec._lazy import lazy_exports

_EXPORTS = {
    "Batch": "streamrec.ingest.batch",
    "Batcher": "streamrec.ingest.batch",
    "DeadLetter": "streamrec.ingest.source",
    "DeadLetterSink": "streamrec.ingest.deadletter",
    "Event": "streamrec.ingest.event",
    "AuditedSource": "streamrec.ingest.feature_audit",
    "FeatureAudit": "streamrec.ingest.feature_audit",
    "FeatureSchema": "streamrec.ingest.schema",
    "SchemaScan": "streamrec.ingest.schema",
    "EventSource": "streamrec.ingest.source",
    "FileDeadLetterSink": "streamrec.ingest.deadletter",
    "FileSource": "streamrec.ingest.file_source",
    "IngestMetrics": "streamrec.ingest.metrics",
    "IteratorSource": "streamrec.ingest.iter_source",
    "Joiner": "streamrec.ingest.joiner",
    "KafkaDeadLetterSink": "streamrec.ingest.deadletter",
    "KafkaSource": "streamrec.ingest.kafka_source",
    "MemoryDeadLetterSink": "streamrec.ingest.deadletter",
    "MemorySource": "streamrec.ingest.source",
    "SourceBatch": "streamrec.ingest.source",
    "create_topics": "streamrec.ingest.kafka_source",
    "decode_csv_row": "streamrec.ingest.decode",
    "decode_json": "streamrec.ingest.decode",
    "decode_protobuf": "streamrec.ingest.decode",
    "decode_value": "streamrec.ingest.decode",
    "encode_json": "streamrec.ingest.decode",
    "encode_protobuf": "streamrec.ingest.decode",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
