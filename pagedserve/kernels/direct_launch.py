"""Launching compiled Triton kernels without Triton's per-call dispatch.

`kernel[grid](*args)` goes through Triton's JIT dispatch on every call: it binds
the arguments, works out their specialization (dtypes, 16-byte alignment of
pointers, integers equal to 1 or divisible by 16), turns that into a string key,
looks the compiled variant up and builds launch metadata. On the H100 machines
that was 30-50 us of host time per launch on top of the 7-10 us the compiled
kernel's own launcher takes (benchmarks/launch_cost.py; docs/kernels.md,
"Launch cost on the host"); outside CUDA graphs a small model's step is bound
by such host time.

DirectLauncher keeps, per kernel, the compiled variant for each key that it
computes itself, and calls that variant's launcher directly. The key is a
superset of what Triton specializes on: for each argument passed by position,
a tensor's dtype and 16-byte alignment, an integer's "equal to 1", "divisible
by 16" and width (32-bit, 64-bit, unsigned 64-bit), a float's type, a tensor
descriptor's dtype, block shape, padding and alignments; any other value
(constexprs, bools, None) as itself; every keyword argument (constexprs and
launch options) by value. A key seen for the first time launches through
Triton's JIT, which compiles or finds the variant and checks everything, and
the variant it returns is kept. So a wrong variant would need Triton to
specialize on something the key leaves out; tests/kernels/test_direct_launch.py
checks on a GPU that the kept variant is the one Triton's dispatch would pick.

Skipped on a direct launch besides the key: Triton's check that the globals a
kernel reads have not changed since it was compiled (the kernels here read
none that change). Measured: 3-28 us (7-13 in most runs) saved per launch of
the kernels without tensor descriptors; with descriptors the key costs about
what it saves.

Triton's dispatch is still used where this path does not apply: under the
interpreter (CPU), when a launch hook is installed (profilers such as Proton
install one), on Triton versions without `triton.knobs`, and when
PAGEDSERVE_DIRECT_LAUNCH=0 (the switch, for comparisons and as an escape hatch).
A compiled launcher that refuses the call (a Triton whose launcher takes other
arguments) turns the direct path off for that kernel, with a warning.
"""

from __future__ import annotations

import logging
import os

import torch

from pagedserve.kernels._backend import HAS_TRITON, triton

DIRECT_LAUNCH_ENV_VAR = "PAGEDSERVE_DIRECT_LAUNCH"

log = logging.getLogger(__name__)

_INT32 = 1 << 31
_INT64 = 1 << 63


def _int_key(value: int) -> tuple:
    width = 0 if -_INT32 <= value < _INT32 else 1 if -_INT64 <= value < _INT64 else 2
    return (value == 1, value % 16 == 0, width)


def _descriptor_key(descriptor) -> tuple:
    base = descriptor.base
    return (
        base.dtype,
        base.data_ptr() % 16 == 0,
        tuple(descriptor.block_shape),
        tuple(stride % 16 == 0 for stride in descriptor.strides),
        tuple(size % 16 == 0 for size in descriptor.shape),
        getattr(descriptor, "padding", None),
    )


def _arg_key(value) -> object:
    """What Triton could specialize a non-constexpr argument on (a superset)."""
    kind = type(value)
    if kind is torch.Tensor:
        return (value.dtype, value.data_ptr() % 16 == 0)
    if kind is int:
        return _int_key(value)
    if kind is float:
        return float
    if isinstance(value, torch.Tensor):  # a subclass (nn.Parameter)
        return (value.dtype, value.data_ptr() % 16 == 0)
    if kind.__name__ == "TensorDescriptor":
        return _descriptor_key(value)
    return (kind, value)  # bool, None: as themselves


def _hook_installed(hook) -> bool:
    """Whether a launch hook would run: newer Triton keeps an empty chain of
    hooks (`calls`) where older Triton kept None."""
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return calls is None or len(calls) > 0


def _current_stream(device: int) -> int:
    """The current CUDA stream's handle, as Triton's dispatch asks for it."""
    return triton.runtime.driver.active.get_current_stream(device)


def direct_launch_enabled() -> bool:
    return os.environ.get(DIRECT_LAUNCH_ENV_VAR, "1") != "0"


class DirectLauncher:
    """`launcher.launch(grid, *args, **kwargs)` does what `kernel[grid](*args,
    **kwargs)` does. Arguments that change from call to call (tensors, sizes,
    strides) go by position; keyword arguments are keyed by value, so they
    should be the constexprs and launch options (num_warps, num_stages)."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self._name = getattr(kernel, "__name__", repr(kernel))
        self._usable = (
            HAS_TRITON and type(kernel).__name__ == "JITFunction" and hasattr(triton, "knobs")
        )
        params = getattr(kernel, "params", [])
        self._names = [param.name for param in params]
        self._is_constexpr = [param.is_constexpr for param in params]
        # Parameters before the first constexpr: keyed by _arg_key alone.
        self._leading_runtime = next(
            (index for index, constexpr in enumerate(self._is_constexpr) if constexpr),
            len(params),
        )
        self._variants: dict[tuple, object] = {}  # key -> CompiledKernel

    def key(self, args: tuple, kwargs: dict) -> tuple:
        """The cache key of a launch with these arguments (see the module's docstring)."""
        if len(args) <= self._leading_runtime:
            positional = tuple([_arg_key(value) for value in args])
        else:
            positional = tuple(
                value if constexpr else _arg_key(value)
                for value, constexpr in zip(args, self._is_constexpr, strict=False)
            )
        return (torch.cuda.current_device(), positional, tuple(kwargs.items()))

    def variant(self, args: tuple, kwargs: dict):
        """The compiled variant kept for these arguments, or None."""
        return self._variants.get(self.key(args, kwargs))

    def launch(self, grid: tuple, *args, **kwargs) -> None:
        runtime = triton.knobs.runtime if self._usable else None
        if (
            runtime is None
            or _hook_installed(runtime.launch_enter_hook)
            or _hook_installed(runtime.launch_exit_hook)
            or not direct_launch_enabled()
        ):
            self.kernel[grid](*args, **kwargs)
            return
        key = self.key(args, kwargs)
        compiled = self._variants.get(key)
        if compiled is None:
            # Triton's dispatch compiles or finds the variant, checks the
            # arguments and launches; later launches with this key go direct,
            # if every parameter was given (none left to a default).
            compiled = self.kernel[grid](*args, **kwargs)
            if all(name in kwargs for name in self._names[len(args) :]):
                self._variants[key] = compiled
            return
        values = args + tuple(kwargs[name] for name in self._names[len(args) :])
        grid_y = grid[1] if len(grid) > 1 else 1
        grid_z = grid[2] if len(grid) > 2 else 1
        try:
            compiled.run(
                grid[0], grid_y, grid_z, _current_stream(key[0]), compiled.function,
                compiled.packed_metadata, None, None, None, *values,
            )  # fmt: skip
        except TypeError as error:  # raised before launching, by the argument parsing
            log.warning(
                "direct launch of %s refused (%s); Triton's dispatch launches it from now on",
                self._name, error,
            )  # fmt: skip
            self._usable = False
            self._variants.clear()
            self.kernel[grid](*args, **kwargs)
