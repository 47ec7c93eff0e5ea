from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureValues(_message.Message):
    __slots__ = ("strings", "numbers", "ids")
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    strings: _containers.RepeatedScalarFieldContainer[str]
    numbers: _containers.RepeatedScalarFieldContainer[float]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, strings: _Optional[_Iterable[str]] = ..., numbers: _Optional[_Iterable[float]] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "type", "request_id", "user_id", "item_id", "timestamp_ms", "features", "label", "served_score", "model_version")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValues, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    request_id: str
    user_id: int
    item_id: int
    timestamp_ms: int
    features: _containers.MessageMap[str, FeatureValues]
    label: float
    served_score: float
    model_version: int
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., request_id: _Optional[str] = ..., user_id: _Optional[int] = ..., item_id: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., features: _Optional[_Mapping[str, FeatureValues]] = ..., label: _Optional[float] = ..., served_score: _Optional[float] = ..., model_version: _Optional[int] = ...) -> None: ...
