from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbeddingTableDelta(_message.Message):
    __slots__ = ("table", "dim", "ids", "rows", "evicted_ids")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_IDS_FIELD_NUMBER: _ClassVar[int]
    table: str
    dim: int
    ids: bytes
    rows: bytes
    evicted_ids: bytes
    def __init__(self, table: _Optional[str] = ..., dim: _Optional[int] = ..., ids: _Optional[bytes] = ..., rows: _Optional[bytes] = ..., evicted_ids: _Optional[bytes] = ...) -> None: ...

class DenseTensor(_message.Message):
    __slots__ = ("name", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ParameterChunk(_message.Message):
    __slots__ = ("version", "base_version", "full", "chunk_index", "last", "tables", "dense", "event_time_ms", "exported_at_ms", "model_spec")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    full: bool
    chunk_index: int
    last: bool
    tables: _containers.RepeatedCompositeFieldContainer[EmbeddingTableDelta]
    dense: _containers.RepeatedCompositeFieldContainer[DenseTensor]
    event_time_ms: int
    exported_at_ms: int
    model_spec: str
    def __init__(self, version: _Optional[int] = ..., base_version: _Optional[int] = ..., full: _Optional[bool] = ..., chunk_index: _Optional[int] = ..., last: _Optional[bool] = ..., tables: _Optional[_Iterable[_Union[EmbeddingTableDelta, _Mapping]]] = ..., dense: _Optional[_Iterable[_Union[DenseTensor, _Mapping]]] = ..., event_time_ms: _Optional[int] = ..., exported_at_ms: _Optional[int] = ..., model_spec: _Optional[str] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class VersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...
