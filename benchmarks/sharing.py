"""KV blocks saved by sharing under parallel sampling and beam search (vLLM paper, Fig. 15).

Starts `pagedserve up` on the CPU with the default model, sends each workload
through the public API (`pagedserve.v1.TextGeneration`) once per mode, all of
its requests at once, and meanwhile polls the block manager's GetStats every
~50 ms. For each run it reports

    saved = mean over samples of (logical_blocks - used_blocks) / logical_blocks

where logical_blocks is the sum of ref counts over used blocks (the blocks the
run would need without sharing); samples with no used blocks are skipped. It
also reports the mean kv_utilization (slots holding real tokens over slots in
allocated blocks) of each run.

Workloads are synthetic: seeded random token ids with Alpaca-like or
ShareGPT-like lengths, outputs forced to their length with ignore_eos and
max_tokens. Run from the repository root:

    python -m benchmarks.sharing --json sharing.json --plot docs/sharing.png

`--quick` shrinks every workload for a smoke run. The plot needs the `bench`
extra (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from pagedserve.blockmgr.v1 import blockmgr_pb2
from pagedserve.v1 import generation_pb2 as pb
from tests.stack import Stack, start_stack

POLL_INTERVAL_S = 0.05
SEED = 0
# Token ids below this are the model's special tokens (SmolLM2: ids 0-16); keep clear of them.
FIRST_PLAIN_TOKEN_ID = 100


@dataclass(frozen=True)
class Workload:
    name: str
    num_requests: int
    prompt_tokens: tuple[int, int]  # inclusive range
    output_tokens: tuple[int, int]  # inclusive range
    # The paper's Fig. 15 range of memory saved, percent, over n / beam width 2, 4, 6.
    paper_parallel_pct: tuple[float, float]
    paper_beam_pct: tuple[float, float]


@dataclass(frozen=True)
class Mode:
    label: str
    n: int = 1
    beam_width: int = 1

    @property
    def kind(self) -> str:
        if self.beam_width > 1:
            return "beam"
        return "parallel" if self.n > 1 else "single"


WORKLOADS = [
    Workload("Alpaca-like", 16, (20, 60), (24, 48), (6.1, 9.8), (37.6, 55.2)),
    Workload("ShareGPT-like", 8, (150, 300), (150, 250), (16.2, 30.5), (44.3, 66.3)),
]
# Not run by default (--workloads): Alpaca-like with the paper's mean lengths for
# Alpaca (19 prompt, 58 output tokens), to see how much the prompt length alone moves
# the parallel-sampling figure.
EXTRA_WORKLOADS = [
    Workload("Alpaca-paper-means", 16, (10, 28), (40, 77), (6.1, 9.8), (37.6, 55.2)),
]
MODES = [
    Mode("n=1", n=1),
    *(Mode(f"n={n}", n=n) for n in (2, 4, 6)),
    *(Mode(f"beam={width}", beam_width=width) for width in (2, 4, 6)),
]


@dataclass
class RunResult:
    workload: str
    mode: str
    kind: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    duration_s: float
    num_samples: int
    saved_pct: float
    kv_utilization_pct: float
    peak_used_blocks: int
    peak_logical_blocks: int
    blocks_held_after: int  # used blocks still referenced once the run ended (a leak if > 0)
    sequences_left_after: int
    problems: list[str] = field(default_factory=list)


class StatsPoller:
    """Samples the pool's GetStats on its own thread until stopped."""

    def __init__(self, stack: Stack, pool_id: str):
        self._stub = stack.blockmgr_stub()
        self._request = blockmgr_pb2.GetStatsRequest(pool_id=pool_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[blockmgr_pb2.GetStatsResponse] = []
        self.errors: list[str] = []

    def __enter__(self) -> StatsPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._stub.GetStats(self._request, timeout=5))
            except Exception as error:  # noqa: BLE001 - reported with the run, not hidden
                self.errors.append(repr(error))
            self._stop.wait(POLL_INTERVAL_S)


def make_requests(workload: Workload, mode: Mode, vocab_size: int) -> list[pb.GenerateRequest]:
    """The same prompts and output lengths for every mode of a workload (seeded by it)."""
    rng = random.Random(f"{SEED}:{workload.name}")
    requests = []
    for index in range(workload.num_requests):
        num_prompt = rng.randint(*workload.prompt_tokens)
        num_output = rng.randint(*workload.output_tokens)
        prompt = [rng.randrange(FIRST_PLAIN_TOKEN_ID, vocab_size) for _ in range(num_prompt)]
        sampling = pb.SamplingParams(max_tokens=num_output, ignore_eos=True)
        if mode.beam_width > 1:
            sampling.beam_width = mode.beam_width
            sampling.n = mode.beam_width
            sampling.temperature = 0.0
        else:
            sampling.n = mode.n
            sampling.temperature = 1.0
            sampling.seed = SEED + index
        requests.append(
            pb.GenerateRequest(
                request_id=f"{workload.name}-{mode.label}-{index}",
                prompt_token_ids=pb.TokenIds(ids=prompt),
                sampling=sampling,
            )
        )
    return requests


def check_responses(
    requests: list[pb.GenerateRequest], responses: list[pb.GenerateResponse]
) -> list[str]:
    """Every completion must be there and of its forced length."""
    problems = []
    for request, response in zip(requests, responses, strict=True):
        want = request.sampling.max_tokens
        if len(response.completions) != request.sampling.n:
            problems.append(
                f"{request.request_id}: {len(response.completions)} completions, want {request.sampling.n}"
            )
        for completion in response.completions:
            if len(completion.token_ids) != want:
                problems.append(
                    f"{request.request_id}[{completion.index}]: {len(completion.token_ids)} tokens,"
                    f" want {want} ({pb.FinishReason.Name(completion.finish_reason)})"
                )
    return problems


def summarize(samples: list[blockmgr_pb2.GetStatsResponse]) -> tuple[int, float, float]:
    """(samples used, mean percent saved, mean percent kv utilization) over samples with used blocks."""
    busy = [s for s in samples if s.used_blocks > 0]
    if not busy:
        return 0, 0.0, 0.0
    saved = sum((s.logical_blocks - s.used_blocks) / s.logical_blocks for s in busy) / len(busy)
    utilization = sum(s.kv_utilization for s in busy) / len(busy)
    return len(busy), 100 * saved, 100 * utilization


def run_one(stack: Stack, pool_id: str, workload: Workload, mode: Mode, vocab_size: int):
    requests = make_requests(workload, mode, vocab_size)
    stub = stack.generation_stub()
    problems: list[str] = []
    started = time.monotonic()
    with StatsPoller(stack, pool_id) as poller:
        futures = [stub.Generate.future(request, timeout=1800) for request in requests]
        responses = []
        for request, future in zip(requests, futures, strict=True):
            try:
                responses.append(future.result())
            except Exception as error:  # noqa: BLE001 - a failed request is a finding
                problems.append(f"{request.request_id}: {error!r}")
                responses.append(pb.GenerateResponse())
    duration_s = time.monotonic() - started
    problems += check_responses(requests, responses)
    problems += [f"GetStats: {error}" for error in poller.errors[:3]]
    after = stack.wait_no_blocks_held(timeout_s=10)
    if after.used_blocks or after.num_sequences:
        problems.append(
            f"after the run: {after.used_blocks} blocks still used by {after.num_sequences} sequences"
        )
    num_samples, saved_pct, utilization_pct = summarize(poller.samples)
    return RunResult(
        workload=workload.name,
        mode=mode.label,
        kind=mode.kind,
        num_requests=len(requests),
        prompt_tokens=sum(len(r.prompt_token_ids.ids) for r in requests),
        output_tokens=sum(len(c.token_ids) for r in responses for c in r.completions),
        duration_s=duration_s,
        num_samples=num_samples,
        saved_pct=saved_pct,
        kv_utilization_pct=utilization_pct,
        peak_used_blocks=max((s.used_blocks for s in poller.samples), default=0),
        peak_logical_blocks=max((s.logical_blocks for s in poller.samples), default=0),
        blocks_held_after=after.used_blocks,
        sequences_left_after=after.num_sequences,
        problems=problems,
    )


def paper_range(workload: Workload, mode: Mode) -> str:
    if mode.kind == "parallel":
        low, high = workload.paper_parallel_pct
    elif mode.kind == "beam":
        low, high = workload.paper_beam_pct
    else:
        return "-"
    return f"{low}-{high}"


def table(results: list[RunResult], workloads: list[Workload], modes: list[Mode]) -> str:
    by_name = {w.name: w for w in workloads}
    sizes = [
        f"{w.name}: {w.num_requests} requests, prompts {w.prompt_tokens[0]}-{w.prompt_tokens[1]}"
        f" tokens, outputs {w.output_tokens[0]}-{w.output_tokens[1]} tokens"
        for w in workloads
    ]
    by_label = {m.label: m for m in modes}
    lines = [
        "| Workload | Mode | Saved by sharing, ours (%) | Paper, Fig. 15 (%) | KV utilization (%)"
        " | Peak used / logical blocks | Samples | Run (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = paper_range(by_name[r.workload], by_label[r.mode])
        lines.append(
            f"| {r.workload} | {r.mode} | {r.saved_pct:.1f} | {paper} | {r.kv_utilization_pct:.1f}"
            f" | {r.peak_used_blocks} / {r.peak_logical_blocks} | {r.num_samples} | {r.duration_s:.0f} |"
        )
    return "\n".join(sizes + [""] + lines)


def plot(results: list[RunResult], workloads: list[Workload], path: str) -> None:
    """Bar chart of percent saved per mode, our bars beside the paper's ranges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for axis, workload in zip(axes[0], workloads, strict=True):
        rows = [r for r in results if r.workload == workload.name and r.kind != "single"]
        labels = [r.mode for r in rows]
        colors = ["tab:blue" if r.kind == "parallel" else "tab:orange" for r in rows]
        axis.bar(labels, [r.saved_pct for r in rows], color=colors)
        for r, x in zip(rows, range(len(rows)), strict=True):
            axis.text(
                x, r.saved_pct + 1, f"{r.saved_pct:.1f}", ha="center", fontsize=8, zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
            )  # fmt: skip
        for kind, (low, high) in (
            ("parallel", workload.paper_parallel_pct),
            ("beam", workload.paper_beam_pct),
        ):
            xs = [i for i, r in enumerate(rows) if r.kind == kind]
            if xs:
                # Drawn over the bars, hatched, so that it shows where a bar covers it.
                axis.fill_between(
                    [xs[0] - 0.45, xs[-1] + 0.45], low, high, facecolor="none", edgecolor="black",
                    hatch="//", linewidth=0.8, zorder=3, label=f"paper {kind}: {low}-{high}%",
                )  # fmt: skip
        axis.set_title(workload.name)
        axis.set_ylabel("KV blocks saved by sharing (%)")
        axis.set_ylim(0, 100)
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def shrink(workload: Workload) -> Workload:
    """--quick: a few short requests, to check the script end to end."""
    return Workload(
        workload.name, 2, (20, 40), (8, 16), workload.paper_parallel_pct, workload.paper_beam_pct
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads, a smoke run")
    parser.add_argument(
        "--workloads",
        default=",".join(w.name for w in WORKLOADS),
        help=f"comma-separated; also {','.join(w.name for w in EXTRA_WORKLOADS)}",
    )
    parser.add_argument("--modes", default=",".join(m.label for m in MODES))
    parser.add_argument("--num-blocks", type=int, default=2048)
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--plot", help="write the bar chart here (needs matplotlib)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = [w for w in WORKLOADS + EXTRA_WORKLOADS if w.name in args.workloads.split(",")]
    modes = [m for m in MODES if m.label in args.modes.split(",")]
    if args.quick:
        workloads = [shrink(w) for w in workloads]
    stack = start_stack("--num-blocks", str(args.num_blocks))
    results = []
    try:
        stub = stack.blockmgr_stub()
        (pool,) = stub.ListPools(blockmgr_pb2.ListPoolsRequest()).pools
        model = stack.generation_stub().ListModels(pb.ListModelsRequest()).models[0]
        print(f"model {model.name}, vocab {model.vocab_size}, {args.num_blocks} blocks", flush=True)
        for workload in workloads:
            for mode in modes:
                result = run_one(stack, pool.pool_id, workload, mode, model.vocab_size)
                results.append(result)
                print(
                    f"{workload.name} {mode.label}: saved {result.saved_pct:.1f}%,"
                    f" kv utilization {result.kv_utilization_pct:.1f}%,"
                    f" {result.output_tokens} output tokens in {result.duration_s:.1f} s",
                    flush=True,
                )
                for problem in result.problems:
                    print(f"  PROBLEM {problem}", flush=True)
    finally:
        exit_code = stack.stop()
    print()
    print(table(results, workloads, modes))
    if exit_code != 0:
        print(f"PROBLEM: pagedserve up exited with {exit_code}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(r) for r in results], out, indent=1)
    if args.plot:
        plot(results, workloads, args.plot)
    return 1 if exit_code or any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
