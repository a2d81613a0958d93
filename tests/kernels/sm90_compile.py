"""Compiles every KV-cache and attention kernel variant kernels.precompile
launches, for an H100 (sm_90), on a machine without a GPU.

The CPU tests run the kernels through Triton's interpreter, which executes
Python: code that Triton cannot compile for a GPU (a constexpr branch whose
`return` leaves code after it, a type the compiler rejects) passes there and
fails only on the card. This script records the launches precompile's scratch
calls make (their arguments and compile-time options, chosen by the real
launch rules), then compiles each distinct one for sm_90 down to a cubin
(Triton's bundled ptxas). It launches nothing.

Run as its own process (`python tests/kernels/sm90_compile.py`): Triton must
be imported with the interpreter off, which the test process has turned on.
Prints "compiled N variants for sm_90" and exits 0, or raises.
"""

from __future__ import annotations

import importlib
import os

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: compiled, not interpreted

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

# The modules, not the package's functions of the same names.
copy_blocks = importlib.import_module("pagedserve.kernels.copy_blocks")
paged_attention = importlib.import_module("pagedserve.kernels.paged_attention")
paged_decode_attention = importlib.import_module("pagedserve.kernels.paged_decode_attention")
precompile = importlib.import_module("pagedserve.kernels.precompile")
decode_rows = importlib.import_module("pagedserve.kernels.decode_rows")
write_kv_cache = importlib.import_module("pagedserve.kernels.write_kv_cache")

TARGET = GPUTarget("cuda", 90, 32)
# The compile-time options a variant line names.
VARIANT_FIELDS = ("HEAD_DIM", "BLOCK_M", "BLOCK_N", "CACHED_CONTEXT", "DECODE_ROWS_ONLY")
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
DTYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}
# (num_heads, num_kv_heads, head_dim, dtype): the benchmarks' shape, the
# default model's (float32) and a head size of 256.
SHAPES = [
    (32, 8, 128, torch.bfloat16),
    (9, 3, 64, torch.float32),
    (16, 4, 256, torch.float16),
]


def type_of(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype]
    if isinstance(value, TensorDescriptor):
        shape = ", ".join(str(n) for n in value.block_shape)
        return f"tensordesc<{DTYPES[value.base.dtype]}[{shape}]>"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(1 << 31) <= value < (1 << 31) else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def record_launches() -> list[tuple]:
    """(kernel, signature, constexprs, options) of each launch precompile's
    scratch calls make, for every shape, without launching anything."""
    launches = []

    def recorder(kernel):
        def launch(grid, *args, **kwargs):
            names = kernel.arg_names
            signature = {name: type_of(value) for name, value in zip(names, args, strict=False)}
            constexprs = {k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS}
            signature.update({name: "constexpr" for name in constexprs})
            options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS}
            launches.append((kernel, signature, constexprs, options))

        return launch

    launchers = [
        paged_attention._paged_attention_launcher,
        paged_decode_attention._decode_partition_launcher,
        paged_decode_attention._decode_merge_launcher,
        decode_rows._merge_launcher,
        write_kv_cache._write_kv_cache_launcher,
        copy_blocks._copy_blocks_launcher,
    ]
    for launcher in launchers:
        launcher.launch = recorder(launcher.kernel)
    # As on an H100: the new tokens' K/V tiles through tensor descriptors.
    paged_attention._descriptors_usable = lambda kernel, key, value: True
    for num_heads, num_kv_heads, head_dim, dtype in SHAPES:
        scratch = precompile._Scratch(
            num_heads, num_kv_heads, head_dim, dtype, dtype, 16, torch.device("cpu")
        )
        scratch.write_kv_cache()
        scratch.copy_blocks()
        scratch.prefills()
        scratch.decodes()
    return launches


# An H100's shared memory per multiprocessor, and what each resident program
# costs beyond its own (the CUDA runtime's reserve).
SHARED_PER_MULTIPROCESSOR = 228 * 1024
SHARED_RESERVED_PER_PROGRAM = 1024


def programs_per_multiprocessor(shared_bytes: int) -> int:
    """How many programs of this shared-memory size one multiprocessor holds."""
    return SHARED_PER_MULTIPROCESSOR // (shared_bytes + SHARED_RESERVED_PER_PROGRAM)


def main() -> None:
    compiled = set()
    for kernel, signature, constexprs, options in record_launches():
        key = (kernel.fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
               repr(sorted(options.items())))  # fmt: skip
        if key in compiled:
            continue
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        binary = triton.compile(source, target=TARGET, options=options)
        assert binary.asm.get("cubin"), f"no cubin for {key}"
        compiled.add(key)
        # One line per variant: what the test checks occupancy with.
        shared = binary.metadata.shared
        tiles = {name: constexprs[name] for name in VARIANT_FIELDS if name in constexprs}
        print(
            f"variant {kernel.fn.__name__} {signature.get('query_ptr', '-')} {tiles} "
            f"shared={shared} programs_per_multiprocessor={programs_per_multiprocessor(shared)}"
        )
    print(f"compiled {len(compiled)} variants for sm_90")


if __name__ == "__main__":
    main()
