"""kernels.direct_launch: the key separates every case Triton specializes on
(on CPU); on a GPU, the variant it keeps is the one Triton's own dispatch picks,
and a direct launch computes what a launch through Triton's dispatch does."""

import types

import pytest
import torch
from paged_kv_helpers import random_tensor

from pagedserve.kernels import direct_launch
from pagedserve.kernels._backend import tl, triton
from pagedserve.kernels.direct_launch import (
    DIRECT_LAUNCH_ENV_VAR,
    DirectLauncher,
    _arg_key,
    _hook_installed,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="direct launch: GPU only")


def test_key_separates_what_triton_specializes_on():
    buffer = torch.zeros(64, dtype=torch.float16)
    aligned, misaligned = buffer[:8], buffer[1:9]  # 16-byte and 2-byte aligned
    assert _arg_key(aligned) != _arg_key(misaligned)
    assert _arg_key(aligned) != _arg_key(buffer.float()[:8])  # dtype
    ints = [0, 1, 2, 16, 17, 32, (1 << 31) - 1, 1 << 31, -(1 << 31) - 1, (1 << 63) - 1, 1 << 63]
    # equal to 1, divisible by 16, and the width each falls in: every case its own key
    cases = {
        (n == 1, n % 16 == 0, -(1 << 31) <= n < 1 << 31, -(1 << 63) <= n < 1 << 63) for n in ints
    }
    assert len({_arg_key(n) for n in ints}) == len(cases)
    assert _arg_key(3) == _arg_key(5) and _arg_key(32) == _arg_key(48)
    assert _arg_key(True) != _arg_key(False) != _arg_key(None)
    assert _arg_key(0.5) == _arg_key(2.0)


def test_hooks_count_only_when_installed():
    """Newer Triton keeps an empty chain of launch hooks, older Triton None:
    neither sends launches back through Triton's dispatch, a hook does."""
    assert not _hook_installed(None)
    assert not _hook_installed(types.SimpleNamespace(calls=[]))
    assert _hook_installed(types.SimpleNamespace(calls=[print]))
    assert _hook_installed(print)


class JITFunction:
    """Stands in for a compiled Triton kernel (the class name is what
    DirectLauncher checks): records each launch through "Triton's dispatch";
    its compiled variant's launcher refuses every call, as a Triton whose
    launcher takes other arguments would."""

    __name__ = "stand_in_kernel"

    def __init__(self) -> None:
        self.params = [
            types.SimpleNamespace(name="x_ptr", is_constexpr=False),
            types.SimpleNamespace(name="BLOCK", is_constexpr=True),
        ]
        self.dispatched = []
        self.refused = 0
        self.compiled = types.SimpleNamespace(run=self._refuse, function=0, packed_metadata=0)

    def _refuse(self, *args):
        self.refused += 1
        raise TypeError("function takes exactly 12 arguments")

    def __getitem__(self, grid):
        def dispatch(*args, **kwargs):
            self.dispatched.append((grid, args, kwargs))
            return self.compiled

        return dispatch


def test_refused_direct_launch_falls_back_to_triton(monkeypatch, caplog):
    if not hasattr(triton, "knobs"):
        pytest.skip("this Triton has no knobs: the direct path is never taken")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(direct_launch, "_current_stream", lambda device: 0)
    kernel = JITFunction()
    launcher = DirectLauncher(kernel)
    tensor = torch.zeros(8)
    for _ in range(3):
        launcher.launch((2,), tensor, BLOCK=8)
    # 1st: dispatched and kept; 2nd: refused, then dispatched; 3rd: dispatched.
    assert kernel.refused == 1
    assert [grid for grid, _, _ in kernel.dispatched] == [(2,), (2,), (2,)]
    assert all(kwargs == {"BLOCK": 8} for _, _, kwargs in kernel.dispatched)
    assert "stand_in_kernel" in caplog.text and "refused" in caplog.text


def test_interpreter_launches_through_triton():
    """Under the interpreter (CPU) the launcher keeps nothing: every launch
    goes through Triton's own dispatch, which runs the kernel."""
    if torch.cuda.is_available():
        pytest.skip("the interpreter runs on CPU only")
    source = random_tensor(40, dtype=torch.float32)
    out = torch.full_like(source, float("nan"))
    launcher = DirectLauncher(_scale_kernel)
    for _ in range(2):
        launcher.launch((1,), source, out, 40, 40, 3.0, BLOCK=64)
    torch.testing.assert_close(out, source * 3.0)
    assert launcher._variants == {}


@triton.jit(do_not_specialize=["unspecialized"])
def _scale_kernel(source_ptr, out_ptr, num, unspecialized, factor, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < tl.minimum(num, unspecialized)
    values = tl.load(source_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, values * factor, mask=mask)


@needs_cuda
def test_keeps_the_variant_triton_picks():
    """For each dtype, pointer alignment and specialization of `num`: launched
    twice (the second direct), each output right, and the kept variant is the
    compiled kernel that Triton's dispatch returns for the same arguments."""
    for dtype in (torch.float16, torch.float32):
        for offset in (0, 1):  # 16-byte aligned, then not
            for num in (1, 16, 17):
                launcher = DirectLauncher(_scale_kernel)
                buffer = random_tensor(80, dtype=dtype)
                source = buffer[offset : offset + 64]
                for factor in (2.0, -0.5):
                    out_buffer = torch.full_like(buffer, float("nan"))
                    out = out_buffer[offset : offset + 64]
                    args = (source, out, num, 64, factor)
                    launcher.launch((1,), *args, BLOCK=64)
                    torch.testing.assert_close(out[:num], source[:num] * factor)
                    assert out[num:].isnan().all()
                kept = launcher.variant(args, {"BLOCK": 64})
                assert kept is not None
                assert kept is _scale_kernel.run(*args, grid=(1,), warmup=True, BLOCK=64)


@needs_cuda
def test_direct_and_triton_dispatch_give_the_same_attention(monkeypatch):
    """The executor's attention launches, direct and through Triton's
    dispatch, write the same bits."""
    from test_paged_attention import make_inputs

    from pagedserve import kernels
    from pagedserve.kernels.paged_attention import _paged_attention_launcher
    from pagedserve.kernels.paged_decode_attention import _decode_partition_launcher

    args, _, _, _ = make_inputs([(300, 300), (45, 1), (200, 70)], 8, 2, 64, 16, torch.bfloat16)
    query, key_cache, value_cache, table, lens, scale = (
        args[0], args[3], args[4], args[5], args[7], args[8]
    )  # fmt: skip
    decode_query = query[:3].contiguous()
    outputs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(DIRECT_LAUNCH_ENV_VAR, mode)
        for _ in range(2):  # the first launch of a key goes through Triton's dispatch
            prefill = kernels.paged_attention(*args)
            decode = kernels.paged_decode_attention(
                decode_query, key_cache, value_cache, table, lens, scale
            )
        outputs[mode] = (prefill, decode)
    assert torch.equal(outputs["0"][0], outputs["1"][0])
    assert torch.equal(outputs["0"][1], outputs["1"][1])
    assert _paged_attention_launcher._variants and _decode_partition_launcher._variants
