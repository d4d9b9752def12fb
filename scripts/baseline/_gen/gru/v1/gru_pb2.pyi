from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResetMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESET_MODE_UNSPECIFIED: _ClassVar[ResetMode]
    RESET_MODE_BEFORE_MATMUL: _ClassVar[ResetMode]
    RESET_MODE_AFTER_MATMUL: _ClassVar[ResetMode]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_REGRESSION: _ClassVar[Task]
    TASK_CLASSIFY_PER_STEP: _ClassVar[Task]
    TASK_CLASSIFY_LAST: _ClassVar[Task]
RESET_MODE_UNSPECIFIED: ResetMode
RESET_MODE_BEFORE_MATMUL: ResetMode
RESET_MODE_AFTER_MATMUL: ResetMode
TASK_UNSPECIFIED: Task
TASK_REGRESSION: Task
TASK_CLASSIFY_PER_STEP: Task
TASK_CLASSIFY_LAST: Task

class Matrix(_message.Message):
    __slots__ = ("rows", "cols", "values")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "versions", "input_size", "hidden_size", "num_layers", "output_size", "has_head", "reset_mode", "task", "dtype", "num_parameters", "description", "source_format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HAS_HEAD_FIELD_NUMBER: _ClassVar[int]
    RESET_MODE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    versions: _containers.RepeatedScalarFieldContainer[int]
    input_size: int
    hidden_size: int
    num_layers: int
    output_size: int
    has_head: bool
    reset_mode: ResetMode
    task: Task
    dtype: str
    num_parameters: int
    description: str
    source_format: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[int]] = ..., input_size: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., output_size: _Optional[int] = ..., has_head: _Optional[bool] = ..., reset_mode: _Optional[_Union[ResetMode, str]] = ..., task: _Optional[_Union[Task, str]] = ..., dtype: _Optional[str] = ..., num_parameters: _Optional[int] = ..., description: _Optional[str] = ..., source_format: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class HiddenState(_message.Message):
    __slots__ = ("num_layers", "hidden_size", "values")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    hidden_size: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictSequence(_message.Message):
    __slots__ = ("inputs", "initial_state")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    inputs: Matrix
    initial_state: HiddenState
    def __init__(self, inputs: _Optional[_Union[Matrix, _Mapping]] = ..., initial_state: _Optional[_Union[HiddenState, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "sequences", "return_states")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sequences: _containers.RepeatedCompositeFieldContainer[PredictSequence]
    return_states: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sequences: _Optional[_Iterable[_Union[PredictSequence, _Mapping]]] = ..., return_states: _Optional[bool] = ...) -> None: ...

class PredictOutput(_message.Message):
    __slots__ = ("outputs", "final_state")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    outputs: Matrix
    final_state: HiddenState
    def __init__(self, outputs: _Optional[_Union[Matrix, _Mapping]] = ..., final_state: _Optional[_Union[HiddenState, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "outputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    outputs: _containers.RepeatedCompositeFieldContainer[PredictOutput]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[PredictOutput, _Mapping]]] = ...) -> None: ...

class SessionState(_message.Message):
    __slots__ = ("model", "version", "step_index", "hidden")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    step_index: int
    hidden: HiddenState
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., step_index: _Optional[int] = ..., hidden: _Optional[_Union[HiddenState, _Mapping]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("model", "version", "session_key", "initial_state", "resume")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    session_key: str
    initial_state: HiddenState
    resume: SessionState
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., session_key: _Optional[str] = ..., initial_state: _Optional[_Union[HiddenState, _Mapping]] = ..., resume: _Optional[_Union[SessionState, _Mapping]] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "model", "version", "step_index", "created", "ttl_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    version: int
    step_index: int
    created: bool
    ttl_ms: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., step_index: _Optional[int] = ..., created: _Optional[bool] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "inputs", "start_step", "has_start_step", "return_state", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    HAS_START_STEP_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    inputs: Matrix
    start_step: int
    has_start_step: bool
    return_state: bool
    request_id: int
    def __init__(self, session_id: _Optional[str] = ..., inputs: _Optional[_Union[Matrix, _Mapping]] = ..., start_step: _Optional[int] = ..., has_start_step: _Optional[bool] = ..., return_state: _Optional[bool] = ..., request_id: _Optional[int] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("outputs", "start_step", "next_step", "state", "replayed")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    outputs: Matrix
    start_step: int
    next_step: int
    state: HiddenState
    replayed: bool
    def __init__(self, outputs: _Optional[_Union[Matrix, _Mapping]] = ..., start_step: _Optional[int] = ..., next_step: _Optional[int] = ..., state: _Optional[_Union[HiddenState, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class StepError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("session_id", "request_id", "ok", "error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: int
    ok: StepResult
    error: StepError
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[int] = ..., ok: _Optional[_Union[StepResult, _Mapping]] = ..., error: _Optional[_Union[StepError, _Mapping]] = ...) -> None: ...

class GetSessionStateRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    def __init__(self, state: _Optional[_Union[SessionState, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("step_index",)
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    step_index: int
    def __init__(self, step_index: _Optional[int] = ...) -> None: ...
