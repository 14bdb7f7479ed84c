from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB: _ClassVar[PixelFormat]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_BGR: PixelFormat
PIXEL_FORMAT_RGB: PixelFormat

class StreamOptions(_message.Message):
    __slots__ = ("top_k", "stream_name")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    STREAM_NAME_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    stream_name: str
    def __init__(self, top_k: _Optional[int] = ..., stream_name: _Optional[str] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("data", "width", "height", "format")
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    width: int
    height: int
    format: PixelFormat
    def __init__(self, data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("encoded", "raw", "sequence", "timestamp_us")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    sequence: int
    timestamp_us: int
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., sequence: _Optional[int] = ..., timestamp_us: _Optional[int] = ...) -> None: ...

class FrameRequest(_message.Message):
    __slots__ = ("options", "frame")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    options: StreamOptions
    frame: Frame
    def __init__(self, options: _Optional[_Union[StreamOptions, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class SourceRequest(_message.Message):
    __slots__ = ("source", "options")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    source: str
    options: StreamOptions
    def __init__(self, source: _Optional[str] = ..., options: _Optional[_Union[StreamOptions, _Mapping]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ActionEvent(_message.Message):
    __slots__ = ("kind", "label", "start_sequence")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ActionEvent.Kind]
        KIND_START: _ClassVar[ActionEvent.Kind]
        KIND_END: _ClassVar[ActionEvent.Kind]
    KIND_UNSPECIFIED: ActionEvent.Kind
    KIND_START: ActionEvent.Kind
    KIND_END: ActionEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    START_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    kind: ActionEvent.Kind
    label: str
    start_sequence: int
    def __init__(self, kind: _Optional[_Union[ActionEvent.Kind, str]] = ..., label: _Optional[str] = ..., start_sequence: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("sequence", "timestamp_us", "top", "latency_seconds", "skipped_frames", "action", "events")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    timestamp_us: int
    top: _containers.RepeatedCompositeFieldContainer[LabelScore]
    latency_seconds: float
    skipped_frames: int
    action: str
    events: _containers.RepeatedCompositeFieldContainer[ActionEvent]
    def __init__(self, sequence: _Optional[int] = ..., timestamp_us: _Optional[int] = ..., top: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., latency_seconds: _Optional[float] = ..., skipped_frames: _Optional[int] = ..., action: _Optional[str] = ..., events: _Optional[_Iterable[_Union[ActionEvent, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("labels", "input_width", "input_height", "fps", "background_label", "version")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    input_width: int
    input_height: int
    fps: float
    background_label: str
    version: str
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., fps: _Optional[float] = ..., background_label: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...
