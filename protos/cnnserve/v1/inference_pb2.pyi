from cnnserve.protos.cnnserve.v1 import model_config_pb2 as _model_config_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExplainMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLAIN_METHOD_UNSPECIFIED: _ClassVar[ExplainMethod]
    OCCLUSION: _ClassVar[ExplainMethod]
    GRADCAM: _ClassVar[ExplainMethod]
EXPLAIN_METHOD_UNSPECIFIED: ExplainMethod
OCCLUSION: ExplainMethod
GRADCAM: ExplainMethod

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("data_type", "shape", "data")
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    data_type: _model_config_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, data_type: _Optional[_Union[_model_config_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "images", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "index", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    score: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class ActivationsRequest(_message.Message):
    __slots__ = ("model", "version", "images", "layers", "mosaic")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MOSAIC_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    layers: _containers.RepeatedScalarFieldContainer[str]
    mosaic: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., layers: _Optional[_Iterable[str]] = ..., mosaic: _Optional[bool] = ...) -> None: ...

class LayerActivation(_message.Message):
    __slots__ = ("layer", "activations", "mosaic_png")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    MOSAIC_PNG_FIELD_NUMBER: _ClassVar[int]
    layer: str
    activations: Tensor
    mosaic_png: bytes
    def __init__(self, layer: _Optional[str] = ..., activations: _Optional[_Union[Tensor, _Mapping]] = ..., mosaic_png: _Optional[bytes] = ...) -> None: ...

class ActivationsResponse(_message.Message):
    __slots__ = ("model", "version", "layers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    layers: _containers.RepeatedCompositeFieldContainer[LayerActivation]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerActivation, _Mapping]]] = ...) -> None: ...

class FiltersRequest(_message.Message):
    __slots__ = ("model", "version", "layer", "mosaic", "input_channel")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    MOSAIC_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    layer: str
    mosaic: bool
    input_channel: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., layer: _Optional[str] = ..., mosaic: _Optional[bool] = ..., input_channel: _Optional[int] = ...) -> None: ...

class FiltersResponse(_message.Message):
    __slots__ = ("model", "version", "layer", "kernel", "bias", "mosaic_png")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    MOSAIC_PNG_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    layer: str
    kernel: Tensor
    bias: Tensor
    mosaic_png: bytes
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., layer: _Optional[str] = ..., kernel: _Optional[_Union[Tensor, _Mapping]] = ..., bias: _Optional[_Union[Tensor, _Mapping]] = ..., mosaic_png: _Optional[bytes] = ...) -> None: ...

class OcclusionOptions(_message.Message):
    __slots__ = ("patch_size", "stride", "fill_value")
    PATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    FILL_VALUE_FIELD_NUMBER: _ClassVar[int]
    patch_size: int
    stride: int
    fill_value: float
    def __init__(self, patch_size: _Optional[int] = ..., stride: _Optional[int] = ..., fill_value: _Optional[float] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "version", "image", "target_class", "has_target_class", "method", "occlusion", "overlay")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    HAS_TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    image: Image
    target_class: int
    has_target_class: bool
    method: ExplainMethod
    occlusion: OcclusionOptions
    overlay: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., target_class: _Optional[int] = ..., has_target_class: _Optional[bool] = ..., method: _Optional[_Union[ExplainMethod, str]] = ..., occlusion: _Optional[_Union[OcclusionOptions, _Mapping]] = ..., overlay: _Optional[bool] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "version", "method", "target", "heatmap", "overlay_png")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    method: ExplainMethod
    target: Prediction
    heatmap: Tensor
    overlay_png: bytes
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., method: _Optional[_Union[ExplainMethod, str]] = ..., target: _Optional[_Union[Prediction, _Mapping]] = ..., heatmap: _Optional[_Union[Tensor, _Mapping]] = ..., overlay_png: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("version", "state", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    reason: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class ModelMetadataRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ModelMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "versions", "input", "outputs", "output_kind", "labels", "activation_layers", "execution_providers", "parity_json", "max_batch_size", "preprocessing", "weight_layers", "explain_methods")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PARITY_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_METHODS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    input: _model_config_pb2.TensorSpec
    outputs: _containers.RepeatedCompositeFieldContainer[_model_config_pb2.TensorSpec]
    output_kind: _model_config_pb2.OutputKind
    labels: _containers.RepeatedScalarFieldContainer[str]
    activation_layers: _containers.RepeatedCompositeFieldContainer[_model_config_pb2.ActivationLayer]
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    parity_json: str
    max_batch_size: int
    preprocessing: _model_config_pb2.Preprocessing
    weight_layers: _containers.RepeatedScalarFieldContainer[str]
    explain_methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., input: _Optional[_Union[_model_config_pb2.TensorSpec, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[_model_config_pb2.TensorSpec, _Mapping]]] = ..., output_kind: _Optional[_Union[_model_config_pb2.OutputKind, str]] = ..., labels: _Optional[_Iterable[str]] = ..., activation_layers: _Optional[_Iterable[_Union[_model_config_pb2.ActivationLayer, _Mapping]]] = ..., execution_providers: _Optional[_Iterable[str]] = ..., parity_json: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., preprocessing: _Optional[_Union[_model_config_pb2.Preprocessing, _Mapping]] = ..., weight_layers: _Optional[_Iterable[str]] = ..., explain_methods: _Optional[_Iterable[str]] = ...) -> None: ...
