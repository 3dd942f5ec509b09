from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TYPE_INVALID: _ClassVar[DataType]
    TYPE_FP32: _ClassVar[DataType]
    TYPE_FP16: _ClassVar[DataType]
    TYPE_UINT8: _ClassVar[DataType]
    TYPE_INT32: _ClassVar[DataType]
    TYPE_INT64: _ClassVar[DataType]

class OutputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_KIND_UNSPECIFIED: _ClassVar[OutputKind]
    SOFTMAX: _ClassVar[OutputKind]
    LOGITS: _ClassVar[OutputKind]
    SIGMOID: _ClassVar[OutputKind]

class ColorMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLOR_MODE_UNSPECIFIED: _ClassVar[ColorMode]
    GRAYSCALE: _ClassVar[ColorMode]
    RGB: _ClassVar[ColorMode]

class ResizeFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESIZE_FILTER_UNSPECIFIED: _ClassVar[ResizeFilter]
    NEAREST: _ClassVar[ResizeFilter]
    BILINEAR: _ClassVar[ResizeFilter]
    BICUBIC: _ClassVar[ResizeFilter]
    LANCZOS: _ClassVar[ResizeFilter]
    BOX: _ClassVar[ResizeFilter]
    HAMMING: _ClassVar[ResizeFilter]
TYPE_INVALID: DataType
TYPE_FP32: DataType
TYPE_FP16: DataType
TYPE_UINT8: DataType
TYPE_INT32: DataType
TYPE_INT64: DataType
OUTPUT_KIND_UNSPECIFIED: OutputKind
SOFTMAX: OutputKind
LOGITS: OutputKind
SIGMOID: OutputKind
COLOR_MODE_UNSPECIFIED: ColorMode
GRAYSCALE: ColorMode
RGB: ColorMode
RESIZE_FILTER_UNSPECIFIED: ResizeFilter
NEAREST: ResizeFilter
BILINEAR: ResizeFilter
BICUBIC: ResizeFilter
LANCZOS: ResizeFilter
BOX: ResizeFilter
HAMMING: ResizeFilter

class TensorSpec(_message.Message):
    __slots__ = ("name", "data_type", "dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    data_type: DataType
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., data_type: _Optional[_Union[DataType, str]] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("color_mode", "height", "width", "resize_filter", "scale", "offset", "scaled_decoding")
    COLOR_MODE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FILTER_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SCALED_DECODING_FIELD_NUMBER: _ClassVar[int]
    color_mode: ColorMode
    height: int
    width: int
    resize_filter: ResizeFilter
    scale: float
    offset: float
    scaled_decoding: bool
    def __init__(self, color_mode: _Optional[_Union[ColorMode, str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., resize_filter: _Optional[_Union[ResizeFilter, str]] = ..., scale: _Optional[float] = ..., offset: _Optional[float] = ..., scaled_decoding: _Optional[bool] = ...) -> None: ...

class ActivationLayer(_message.Message):
    __slots__ = ("name", "output_name", "kind", "dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    output_name: str
    kind: str
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., output_name: _Optional[str] = ..., kind: _Optional[str] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class LayerWeights(_message.Message):
    __slots__ = ("layer", "kind", "kernel_initializer", "bias_initializer", "kernel_permutation", "kernel_shape")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KERNEL_INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    BIAS_INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    KERNEL_PERMUTATION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    layer: str
    kind: str
    kernel_initializer: str
    bias_initializer: str
    kernel_permutation: _containers.RepeatedScalarFieldContainer[int]
    kernel_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, layer: _Optional[str] = ..., kind: _Optional[str] = ..., kernel_initializer: _Optional[str] = ..., bias_initializer: _Optional[str] = ..., kernel_permutation: _Optional[_Iterable[int]] = ..., kernel_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class GradCam(_message.Message):
    __slots__ = ("filename", "layer", "input_name", "target_input_name", "activations_output", "gradients_output", "score_output", "unavailable_reason")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SCORE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    filename: str
    layer: str
    input_name: str
    target_input_name: str
    activations_output: str
    gradients_output: str
    score_output: str
    unavailable_reason: str
    def __init__(self, filename: _Optional[str] = ..., layer: _Optional[str] = ..., input_name: _Optional[str] = ..., target_input_name: _Optional[str] = ..., activations_output: _Optional[str] = ..., gradients_output: _Optional[str] = ..., score_output: _Optional[str] = ..., unavailable_reason: _Optional[str] = ...) -> None: ...

class DynamicBatching(_message.Message):
    __slots__ = ("max_queue_delay_microseconds", "max_queue_size", "preferred_batch_size")
    MAX_QUEUE_DELAY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    max_queue_delay_microseconds: int
    max_queue_size: int
    preferred_batch_size: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, max_queue_delay_microseconds: _Optional[int] = ..., max_queue_size: _Optional[int] = ..., preferred_batch_size: _Optional[_Iterable[int]] = ...) -> None: ...

class VersionPolicy(_message.Message):
    __slots__ = ("latest", "all", "specific")
    class Latest(_message.Message):
        __slots__ = ("num_versions",)
        NUM_VERSIONS_FIELD_NUMBER: _ClassVar[int]
        num_versions: int
        def __init__(self, num_versions: _Optional[int] = ...) -> None: ...
    class All(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Specific(_message.Message):
        __slots__ = ("versions",)
        VERSIONS_FIELD_NUMBER: _ClassVar[int]
        versions: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, versions: _Optional[_Iterable[int]] = ...) -> None: ...
    LATEST_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SPECIFIC_FIELD_NUMBER: _ClassVar[int]
    latest: VersionPolicy.Latest
    all: VersionPolicy.All
    specific: VersionPolicy.Specific
    def __init__(self, latest: _Optional[_Union[VersionPolicy.Latest, _Mapping]] = ..., all: _Optional[_Union[VersionPolicy.All, _Mapping]] = ..., specific: _Optional[_Union[VersionPolicy.Specific, _Mapping]] = ...) -> None: ...

class ExecutionSettings(_message.Message):
    __slots__ = ("providers", "intra_op_threads", "inter_op_threads", "model_filename")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    INTER_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILENAME_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedScalarFieldContainer[str]
    intra_op_threads: int
    inter_op_threads: int
    model_filename: str
    def __init__(self, providers: _Optional[_Iterable[str]] = ..., intra_op_threads: _Optional[int] = ..., inter_op_threads: _Optional[int] = ..., model_filename: _Optional[str] = ...) -> None: ...

class ModelConfig(_message.Message):
    __slots__ = ("name", "platform", "zoo_model", "max_batch_size", "input", "output", "output_kind", "num_classes", "label_filename", "preprocessing", "activation_layers", "layer_weights", "dynamic_batching", "version_policy", "execution", "gradcam", "activations_filename", "weights_filename")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ZOO_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FILENAME_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCHING_FIELD_NUMBER: _ClassVar[int]
    VERSION_POLICY_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    GRADCAM_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FILENAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FILENAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    platform: str
    zoo_model: str
    max_batch_size: int
    input: TensorSpec
    output: TensorSpec
    output_kind: OutputKind
    num_classes: int
    label_filename: str
    preprocessing: Preprocessing
    activation_layers: _containers.RepeatedCompositeFieldContainer[ActivationLayer]
    layer_weights: _containers.RepeatedCompositeFieldContainer[LayerWeights]
    dynamic_batching: DynamicBatching
    version_policy: VersionPolicy
    execution: ExecutionSettings
    gradcam: GradCam
    activations_filename: str
    weights_filename: str
    def __init__(self, name: _Optional[str] = ..., platform: _Optional[str] = ..., zoo_model: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., input: _Optional[_Union[TensorSpec, _Mapping]] = ..., output: _Optional[_Union[TensorSpec, _Mapping]] = ..., output_kind: _Optional[_Union[OutputKind, str]] = ..., num_classes: _Optional[int] = ..., label_filename: _Optional[str] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., activation_layers: _Optional[_Iterable[_Union[ActivationLayer, _Mapping]]] = ..., layer_weights: _Optional[_Iterable[_Union[LayerWeights, _Mapping]]] = ..., dynamic_batching: _Optional[_Union[DynamicBatching, _Mapping]] = ..., version_policy: _Optional[_Union[VersionPolicy, _Mapping]] = ..., execution: _Optional[_Union[ExecutionSettings, _Mapping]] = ..., gradcam: _Optional[_Union[GradCam, _Mapping]] = ..., activations_filename: _Optional[str] = ..., weights_filename: _Optional[str] = ...) -> None: ...
