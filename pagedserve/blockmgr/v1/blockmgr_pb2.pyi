from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_KIND_UNSPECIFIED: _ClassVar[DeviceKind]
    DEVICE_KIND_CPU: _ClassVar[DeviceKind]
    DEVICE_KIND_CUDA: _ClassVar[DeviceKind]
DEVICE_KIND_UNSPECIFIED: DeviceKind
DEVICE_KIND_CPU: DeviceKind
DEVICE_KIND_CUDA: DeviceKind

class PoolInfo(_message.Message):
    __slots__ = ("pool_id", "device_kind", "device_index", "dtype", "layout", "shape", "num_blocks", "block_size_tokens", "num_swap_blocks", "device_handle", "swap_handle", "model_key", "executor_ids")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_SWAP_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    SWAP_HANDLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    device_kind: DeviceKind
    device_index: int
    dtype: str
    layout: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    num_blocks: int
    block_size_tokens: int
    num_swap_blocks: int
    device_handle: bytes
    swap_handle: bytes
    model_key: str
    executor_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pool_id: _Optional[str] = ..., device_kind: _Optional[_Union[DeviceKind, str]] = ..., device_index: _Optional[int] = ..., dtype: _Optional[str] = ..., layout: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., num_blocks: _Optional[int] = ..., block_size_tokens: _Optional[int] = ..., num_swap_blocks: _Optional[int] = ..., device_handle: _Optional[bytes] = ..., swap_handle: _Optional[bytes] = ..., model_key: _Optional[str] = ..., executor_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterPoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: PoolInfo
    def __init__(self, pool: _Optional[_Union[PoolInfo, _Mapping]] = ...) -> None: ...

class RegisterPoolResponse(_message.Message):
    __slots__ = ("pool_id",)
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    def __init__(self, pool_id: _Optional[str] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ("pool_id",)
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    def __init__(self, pool_id: _Optional[str] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolInfo]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolInfo, _Mapping]]] = ...) -> None: ...

class RegisterExecutorRequest(_message.Message):
    __slots__ = ("pool_id", "executor_id", "lease_ms")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    executor_id: str
    lease_ms: int
    def __init__(self, pool_id: _Optional[str] = ..., executor_id: _Optional[str] = ..., lease_ms: _Optional[int] = ...) -> None: ...

class RegisterExecutorResponse(_message.Message):
    __slots__ = ("executor_id", "lease_ms", "pool")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    lease_ms: int
    pool: PoolInfo
    def __init__(self, executor_id: _Optional[str] = ..., lease_ms: _Optional[int] = ..., pool: _Optional[_Union[PoolInfo, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("executor_id",)
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    def __init__(self, executor_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_ms",)
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    lease_ms: int
    def __init__(self, lease_ms: _Optional[int] = ...) -> None: ...

class UnregisterExecutorRequest(_message.Message):
    __slots__ = ("executor_id",)
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    def __init__(self, executor_id: _Optional[str] = ...) -> None: ...

class UnregisterExecutorResponse(_message.Message):
    __slots__ = ("freed_sequences",)
    FREED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    freed_sequences: int
    def __init__(self, freed_sequences: _Optional[int] = ...) -> None: ...

class AllocateOp(_message.Message):
    __slots__ = ("seq_id", "token_ids", "cache_salt", "use_prefix_cache")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    USE_PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_salt: str
    use_prefix_cache: bool
    def __init__(self, seq_id: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., cache_salt: _Optional[str] = ..., use_prefix_cache: _Optional[bool] = ...) -> None: ...

class AppendOp(_message.Message):
    __slots__ = ("seq_id", "token_ids")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq_id: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ComputedOp(_message.Message):
    __slots__ = ("seq_id", "num_computed_tokens")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    num_computed_tokens: int
    def __init__(self, seq_id: _Optional[int] = ..., num_computed_tokens: _Optional[int] = ...) -> None: ...

class ForkOp(_message.Message):
    __slots__ = ("parent_seq_id", "child_seq_id")
    PARENT_SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    CHILD_SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    parent_seq_id: int
    child_seq_id: int
    def __init__(self, parent_seq_id: _Optional[int] = ..., child_seq_id: _Optional[int] = ...) -> None: ...

class FreeOp(_message.Message):
    __slots__ = ("seq_id",)
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    def __init__(self, seq_id: _Optional[int] = ...) -> None: ...

class SwapOutOp(_message.Message):
    __slots__ = ("seq_id",)
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    def __init__(self, seq_id: _Optional[int] = ...) -> None: ...

class SwapInOp(_message.Message):
    __slots__ = ("seq_id",)
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    def __init__(self, seq_id: _Optional[int] = ...) -> None: ...

class AppendBatchOp(_message.Message):
    __slots__ = ("seq_ids", "token_ids")
    SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    seq_ids: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq_ids: _Optional[_Iterable[int]] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class BlockOp(_message.Message):
    __slots__ = ("allocate", "append", "computed", "fork", "free", "swap_out", "swap_in", "append_batch")
    ALLOCATE_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_FIELD_NUMBER: _ClassVar[int]
    APPEND_BATCH_FIELD_NUMBER: _ClassVar[int]
    allocate: AllocateOp
    append: AppendOp
    computed: ComputedOp
    fork: ForkOp
    free: FreeOp
    swap_out: SwapOutOp
    swap_in: SwapInOp
    append_batch: AppendBatchOp
    def __init__(self, allocate: _Optional[_Union[AllocateOp, _Mapping]] = ..., append: _Optional[_Union[AppendOp, _Mapping]] = ..., computed: _Optional[_Union[ComputedOp, _Mapping]] = ..., fork: _Optional[_Union[ForkOp, _Mapping]] = ..., free: _Optional[_Union[FreeOp, _Mapping]] = ..., swap_out: _Optional[_Union[SwapOutOp, _Mapping]] = ..., swap_in: _Optional[_Union[SwapInOp, _Mapping]] = ..., append_batch: _Optional[_Union[AppendBatchOp, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("executor_id", "ops", "sparse_results")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    ops: _containers.RepeatedCompositeFieldContainer[BlockOp]
    sparse_results: bool
    def __init__(self, executor_id: _Optional[str] = ..., ops: _Optional[_Iterable[_Union[BlockOp, _Mapping]]] = ..., sparse_results: _Optional[bool] = ...) -> None: ...

class OpResult(_message.Message):
    __slots__ = ("ok", "new_block_ids", "replaced_positions", "replaced_block_ids", "num_cached_tokens")
    OK_FIELD_NUMBER: _ClassVar[int]
    NEW_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    REPLACED_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    new_block_ids: _containers.RepeatedScalarFieldContainer[int]
    replaced_positions: _containers.RepeatedScalarFieldContainer[int]
    replaced_block_ids: _containers.RepeatedScalarFieldContainer[int]
    num_cached_tokens: int
    def __init__(self, ok: _Optional[bool] = ..., new_block_ids: _Optional[_Iterable[int]] = ..., replaced_positions: _Optional[_Iterable[int]] = ..., replaced_block_ids: _Optional[_Iterable[int]] = ..., num_cached_tokens: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("results", "copy_src_block_ids", "copy_dst_block_ids", "swap_out_device_block_ids", "swap_out_host_block_ids", "swap_in_host_block_ids", "swap_in_device_block_ids", "num_free_blocks", "result_indices", "num_results")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COPY_SRC_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    COPY_DST_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_DEVICE_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_HOST_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_HOST_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_DEVICE_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RESULT_INDICES_FIELD_NUMBER: _ClassVar[int]
    NUM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OpResult]
    copy_src_block_ids: _containers.RepeatedScalarFieldContainer[int]
    copy_dst_block_ids: _containers.RepeatedScalarFieldContainer[int]
    swap_out_device_block_ids: _containers.RepeatedScalarFieldContainer[int]
    swap_out_host_block_ids: _containers.RepeatedScalarFieldContainer[int]
    swap_in_host_block_ids: _containers.RepeatedScalarFieldContainer[int]
    swap_in_device_block_ids: _containers.RepeatedScalarFieldContainer[int]
    num_free_blocks: int
    result_indices: _containers.RepeatedScalarFieldContainer[int]
    num_results: int
    def __init__(self, results: _Optional[_Iterable[_Union[OpResult, _Mapping]]] = ..., copy_src_block_ids: _Optional[_Iterable[int]] = ..., copy_dst_block_ids: _Optional[_Iterable[int]] = ..., swap_out_device_block_ids: _Optional[_Iterable[int]] = ..., swap_out_host_block_ids: _Optional[_Iterable[int]] = ..., swap_in_host_block_ids: _Optional[_Iterable[int]] = ..., swap_in_device_block_ids: _Optional[_Iterable[int]] = ..., num_free_blocks: _Optional[int] = ..., result_indices: _Optional[_Iterable[int]] = ..., num_results: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("pool_id",)
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    def __init__(self, pool_id: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("total_blocks", "free_blocks", "used_blocks", "cached_blocks", "swapped_blocks", "kv_utilization", "prefix_cache_hit_rate", "num_sequences", "num_executors", "shared_blocks", "logical_blocks", "consecutive_block_ratio")
    TOTAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    USED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CACHED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    NUM_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    NUM_EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    SHARED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_BLOCK_RATIO_FIELD_NUMBER: _ClassVar[int]
    total_blocks: int
    free_blocks: int
    used_blocks: int
    cached_blocks: int
    swapped_blocks: int
    kv_utilization: float
    prefix_cache_hit_rate: float
    num_sequences: int
    num_executors: int
    shared_blocks: int
    logical_blocks: int
    consecutive_block_ratio: float
    def __init__(self, total_blocks: _Optional[int] = ..., free_blocks: _Optional[int] = ..., used_blocks: _Optional[int] = ..., cached_blocks: _Optional[int] = ..., swapped_blocks: _Optional[int] = ..., kv_utilization: _Optional[float] = ..., prefix_cache_hit_rate: _Optional[float] = ..., num_sequences: _Optional[int] = ..., num_executors: _Optional[int] = ..., shared_blocks: _Optional[int] = ..., logical_blocks: _Optional[int] = ..., consecutive_block_ratio: _Optional[float] = ...) -> None: ...
