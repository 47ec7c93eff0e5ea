from streamrec.protos import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("user_id", "user_key", "features", "item_ids", "item_keys", "candidate_features", "candidate_columns")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _event_pb2.FeatureValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_event_pb2.FeatureValues, _Mapping]] = ...) -> None: ...
    class CandidateColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureColumn
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureColumn, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_KEY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    ITEM_KEYS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    user_key: str
    features: _containers.MessageMap[str, _event_pb2.FeatureValues]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    item_keys: _containers.RepeatedScalarFieldContainer[str]
    candidate_features: _containers.RepeatedCompositeFieldContainer[CandidateFeatures]
    candidate_columns: _containers.MessageMap[str, FeatureColumn]
    def __init__(self, user_id: _Optional[int] = ..., user_key: _Optional[str] = ..., features: _Optional[_Mapping[str, _event_pb2.FeatureValues]] = ..., item_ids: _Optional[_Iterable[int]] = ..., item_keys: _Optional[_Iterable[str]] = ..., candidate_features: _Optional[_Iterable[_Union[CandidateFeatures, _Mapping]]] = ..., candidate_columns: _Optional[_Mapping[str, FeatureColumn]] = ...) -> None: ...

class CandidateFeatures(_message.Message):
    __slots__ = ("features",)
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _event_pb2.FeatureValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_event_pb2.FeatureValues, _Mapping]] = ...) -> None: ...
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.MessageMap[str, _event_pb2.FeatureValues]
    def __init__(self, features: _Optional[_Mapping[str, _event_pb2.FeatureValues]] = ...) -> None: ...

class FeatureColumn(_message.Message):
    __slots__ = ("strings", "numbers", "ids")
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    strings: _containers.RepeatedScalarFieldContainer[str]
    numbers: _containers.RepeatedScalarFieldContainer[float]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, strings: _Optional[_Iterable[str]] = ..., numbers: _Optional[_Iterable[float]] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("scores", "model_version")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: int
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "user_key", "features", "item_ids", "item_keys", "candidate_features", "k", "candidate_columns")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _event_pb2.FeatureValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_event_pb2.FeatureValues, _Mapping]] = ...) -> None: ...
    class CandidateColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureColumn
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureColumn, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_KEY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    ITEM_KEYS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    user_key: str
    features: _containers.MessageMap[str, _event_pb2.FeatureValues]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    item_keys: _containers.RepeatedScalarFieldContainer[str]
    candidate_features: _containers.RepeatedCompositeFieldContainer[CandidateFeatures]
    k: int
    candidate_columns: _containers.MessageMap[str, FeatureColumn]
    def __init__(self, user_id: _Optional[int] = ..., user_key: _Optional[str] = ..., features: _Optional[_Mapping[str, _event_pb2.FeatureValues]] = ..., item_ids: _Optional[_Iterable[int]] = ..., item_keys: _Optional[_Iterable[str]] = ..., candidate_features: _Optional[_Iterable[_Union[CandidateFeatures, _Mapping]]] = ..., k: _Optional[int] = ..., candidate_columns: _Optional[_Mapping[str, FeatureColumn]] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "item_key", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_KEY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    item_key: str
    score: float
    def __init__(self, item_id: _Optional[int] = ..., item_key: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: int
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...
