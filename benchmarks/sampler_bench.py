"""The sampler's time per step: greedy rows against sampled ones (temperature,
top-k, top-p), each row with its own generator as the engine gives it.

Run from the repository root: `python3 -m benchmarks.sampler_bench [--device cuda]`.
Logits are random [rows, vocab] float32 on the device, of two kinds: flat
(normal, standard deviation 3: a top-p 0.95 nucleus of thousands of tokens)
and peaked (standard deviation 2, and 16 tokens a row raised by 14, which
carry about 98% of the probability: a confident model's). Each timing is the
median of --repeats calls of executor.sampler.sample, which returns host lists
(so every call ends with the device synchronized, as a step does). Not a test:
figures depend on the machine (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.report import device_name, print_markdown_table
from pagedserve.executor.request import SamplingOptions
from pagedserve.executor.sampler import make_generator, sample

VOCAB_SIZES = (49152, 151936)  # the default model's; Qwen3's
ROW_COUNTS = (8, 64, 256)
OPTIONS = {
    "greedy": dict(temperature=0.0, top_p=1.0, top_k=0),
    "temperature 0.8": dict(temperature=0.8, top_p=1.0, top_k=0),
    "top-p 0.95": dict(temperature=0.8, top_p=0.95, top_k=0),
    "top-k 50, top-p 0.95": dict(temperature=0.8, top_p=0.95, top_k=50),
}


def random_logits(kind: str, rows: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    if kind == "flat":
        return torch.randn(rows, vocab_size, device=device) * 3
    logits = torch.randn(rows, vocab_size, device=device) * 2
    raised = torch.randint(0, vocab_size, (rows, 16), device=device)
    return logits.scatter_add(1, raised, torch.full(raised.shape, 14.0, device=device))


def engine_generator(seed: int, device: torch.device):
    """What the engine gives the sampler for a row: make_generator's generator.
    It takes the seed alone since the batched sampler (a random.Random on the
    host); before, also the device (a torch.Generator there), which this
    script still accepts, so that it times the earlier sampler too."""
    try:
        return make_generator(seed)
    except TypeError:
        return make_generator(seed, device)


def time_sample(logits: torch.Tensor, options: SamplingOptions, repeats: int) -> float:
    """Median ms of one sample() call over rows that all share options."""
    rows = logits.shape[0]
    generators = [
        None if options.greedy else engine_generator(options.seed + row, logits.device)
        for row in range(rows)
    ]
    times = []
    for _ in range(repeats + 2):  # the first two warm up
        started_s = time.perf_counter()
        sample(logits, [options] * rows, generators)
        times.append((time.perf_counter() - started_s) * 1e3)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    results = {}
    shapes = [(v, r, k) for v in VOCAB_SIZES for r in ROW_COUNTS for k in ("flat", "peaked")]
    for vocab_size, rows, kind in shapes:
        logits = random_logits(kind, rows, vocab_size, device)
        for name, fields in OPTIONS.items():
            options = SamplingOptions(max_tokens=1, seed=0, **fields)
            results[vocab_size, rows, kind, name] = time_sample(logits, options, args.repeats)
    print(f"\n{device_name(device)}: sampler ms per call (medians of {args.repeats})")
    print_markdown_table(
        ["vocabulary", "rows", "logits", *OPTIONS],
        [
            [
                f"{vocab:,}",
                str(rows),
                kind,
                *(f"{results[vocab, rows, kind, o]:.2f}" for o in OPTIONS),
            ]
            for vocab, rows, kind in shapes
        ],
    )


if __name__ == "__main__":
    main()
