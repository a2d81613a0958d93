"""Paged attention over cached context on one CUDA GPU: chunked prefill,
prefix-cache hits and mixed steps (decodes beside a prompt chunk), against
SDPA on the same lengths stored contiguously, in the same run.

Run from the repository root: `python3 -m benchmarks.cached_attention_bench`.

kernels_bench times prompts without cached context (the fresh-prompt path)
and decode-only batches. A serving step is often neither: a long prompt is
split into chunks that attend to the chunks before them, a prompt that hits
the prefix cache attends to the cached blocks, and while requests arrive the
scheduler puts decodes and prompt chunks in one step. The executor sends all
three through the varlen kernel (`paged_attention`, block-table path). Each
case is a list of (seq_len, q_len) per sequence; SDPA's baseline takes each
group of equal (seq_len, q_len) in one call, with the causal mask aligned to
the end of the keys (`causal_lower_right`), and is the sum of those calls.

Timed variants of ours:
- "varlen": the executor's call, one launch over the whole step;
- "split": decode rows (q_len 1) through the decode kernel, the rest through
  the varlen kernel (two launches), for the mixed cases.

Each is timed eagerly (do_bench: L2 flushed before each call) and replayed
from a CUDA graph (as the executor runs steps), over copies of the inputs
rotated so that repeated calls do not hit L2. A short table is printed last.
`--table-tokens` and `--rows` shape a step as the executor's prefill graphs
run it: every block table as wide as the static one, and empty sequences
after the step's up to the graph's rows.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import statistics
import sys

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention.bias import causal_lower_right

from benchmarks.bench_table import FAILURES, bench_graph_ms, bench_ms, check
from benchmarks.gpu_timing import copy_bandwidth_gbs, rel_err
from benchmarks.paged_inputs import (
    BLOCK_SIZE,
    DEVICE,
    DTYPE,
    HEAD_DIM,
    NUM_HEADS,
    NUM_KV_HEADS,
    ROTATE_BYTES,
    contiguous_kv,
    make_paged,
    new_tokens_kv,
)
from benchmarks.report import print_markdown_table
from pagedserve.kernels.paged_attention import paged_attention_triton
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton

MAX_COPIES = 8
ROUNDS = 5  # each variant and SDPA timed in turn, medians

# name -> [(count, seq_len, q_len)]: `count` sequences of seq_len tokens, of
# which the last q_len are new in this step (seq_len - q_len are cached).
CASES = {
    "chunk b1 4k+512": [(1, 4096 + 512, 512)],
    "chunk b1 16k+2k": [(1, 16384 + 2048, 2048)],
    "chunk b4 2k+512": [(4, 2048 + 512, 512)],
    "prefix hit b16 768+256": [(16, 1024, 256)],
    "mixed 64x1k + 512 fresh": [(64, 1024, 1), (1, 512, 512)],
    "mixed 64x2k + 2k+512": [(64, 2048, 1), (1, 2048 + 512, 512)],
    "mixed 128x1k + 4k+512": [(128, 1024, 1), (1, 4096 + 512, 512)],
    "mixed 32x8k + 2k fresh": [(32, 8192, 1), (1, 2048, 2048)],
    # A few long decodes beside a chunk: too few decode rows to fill the GPU
    # one program per (row, kv head); their keys go in partitions (v19).
    "mixed 2x32k + 2k+512": [(2, 32768, 1), (1, 2048 + 512, 512)],
    "mixed 8x16k + 1k fresh": [(8, 16384, 1), (1, 1024, 1024)],
    # Fresh prompts only, through the executor's call (cached_context=True, as
    # a prefill graph runs every step) and, as "varlen no context", through
    # the fresh-prompt path that kernels_bench times.
    "fresh b16 1k": [(16, 1024, 1024)],
    "fresh b8 256": [(8, 256, 256)],
    "fresh b1 2k": [(1, 2048, 2048)],
    # Decode only, as the decode graphs run it: "decode kernel" (with
    # --table-tokens, at a graph's table width).
    "decode b8 1k": [(8, 1024, 1)],
    "decode b64 1k": [(64, 1024, 1)],
    "decode b32 2k": [(32, 2048, 1)],
    "decode b256 1k": [(256, 1024, 1)],
}


class Case:
    """One step's inputs in `copies` rotated copies, and SDPA's contiguous copy."""

    def __init__(
        self, groups: list[tuple[int, int, int]], table_tokens: int = 0, rows: int = 0
    ) -> None:
        self.seqs = [(seq_len, q_len) for count, seq_len, q_len in groups for _ in range(count)]
        self.groups = groups
        kv_bytes = sum(2 * n * NUM_KV_HEADS * HEAD_DIM * 2 for n, _ in self.seqs)
        self.kv_bytes = kv_bytes
        self.copies = max(1, min(MAX_COPIES, ROTATE_BYTES // kv_bytes))
        lens = [n for n, _ in self.seqs]
        self.key_cache, self.value_cache, self.tables, self.seq_lens = make_paged(
            lens, NUM_KV_HEADS, HEAD_DIM, DTYPE, self.copies
        )
        if table_tokens:  # as wide as a CUDA graph's static table (the model's longest)
            pad = triton.cdiv(table_tokens, BLOCK_SIZE) - self.tables[0].shape[1]
            self.tables = [F.pad(table, (0, max(0, pad)), value=1 << 28) for table in self.tables]
        q_lens = torch.tensor([0] + [q for _, q in self.seqs], device=DEVICE)
        self.query_start_loc = q_lens.cumsum(0).to(torch.int32)
        if rows > len(self.seqs):  # empty sequences after the step's, as in a CUDA graph's rows
            empty = rows - len(self.seqs)
            self.tables = [F.pad(table, (0, 0, 0, empty), value=1 << 28) for table in self.tables]
            self.seq_lens = F.pad(self.seq_lens, (0, empty))
            self.query_start_loc = F.pad(
                self.query_start_loc, (0, empty), value=int(self.query_start_loc[-1])
            )
        num_tokens = int(self.query_start_loc[-1])
        self.num_decodes = sum(1 for _, q in self.seqs if q == 1)
        self.queries = [
            torch.randn(num_tokens, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
            for _ in range(self.copies)
        ]
        self.new_kv = [
            new_tokens_kv(self.key_cache, self.value_cache, table, self.seqs)
            for table in self.tables
        ]
        self.dense = [self._dense_groups(copy) for copy in range(self.copies)]
        self.out = torch.empty_like(self.queries[0])
        self._next = 0
        # The host's plan for long decode rows, always passed (as the executor's
        # prefill graphs do), where the package takes one (not before v20).
        self.varlen_options = {}
        if "decode_split" in inspect.signature(paged_attention_triton).parameters:
            from pagedserve.kernels import plan_decode_row_split

            q_lens = self.query_start_loc.diff().tolist()
            plan = plan_decode_row_split(q_lens, self.seq_lens.tolist(), NUM_KV_HEADS, DEVICE)
            self.varlen_options["decode_split"] = torch.tensor(
                plan, dtype=torch.int32, device=DEVICE
            )

    def _dense_groups(self, copy: int) -> list[tuple[torch.Tensor, ...]]:
        """Per group: SDPA's query [count, heads, q_len, dim] and contiguous K, V."""
        groups, first_seq, first_token = [], 0, 0
        query, table = self.queries[copy], self.tables[copy]
        for count, seq_len, q_len in self.groups:
            rows = table[first_seq : first_seq + count]
            q = query[first_token : first_token + count * q_len]
            q = q.view(count, q_len, NUM_HEADS, HEAD_DIM).transpose(1, 2).contiguous()
            k = contiguous_kv(self.key_cache, rows, seq_len)
            v = contiguous_kv(self.value_cache, rows, seq_len)
            groups.append((q, k, v))
            first_seq += count
            first_token += count * q_len
        return groups

    def pick(self) -> int:
        self._next = (self._next + 1) % self.copies
        return self._next

    def sdpa(self, copy: int) -> torch.Tensor:
        """SDPA over each group, outputs back in the step's token order."""
        outs = []
        for q, k, v in self.dense[copy]:
            mask = causal_lower_right(q.shape[2], k.shape[2]) if q.shape[2] > 1 else None
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=HEAD_DIM**-0.5, enable_gqa=True
            )
            outs.append(out.transpose(1, 2).flatten(0, 1))
        return torch.cat(outs)

    def varlen(
        self, copy: int, config: dict | None = None, cached_context: bool = True
    ) -> torch.Tensor:
        options = self.varlen_options if cached_context else {"cached_context": False}
        return paged_attention_triton(
            self.queries[copy], *self.new_kv[copy], self.key_cache, self.value_cache,
            self.tables[copy], self.query_start_loc, self.seq_lens, HEAD_DIM**-0.5, out=self.out,
            config=config, **options,
        )  # fmt: skip

    def decode(self, copy: int) -> torch.Tensor:
        """Every row through the decode kernel (a decode-only step)."""
        return paged_decode_attention_triton(
            self.queries[copy], self.key_cache, self.value_cache, self.tables[copy],
            self.seq_lens, HEAD_DIM**-0.5, out=self.out,
        )  # fmt: skip

    def split(self, copy: int) -> torch.Tensor:
        """Decode rows (the step's first num_decodes) through the decode kernel."""
        d, scale, query = self.num_decodes, HEAD_DIM**-0.5, self.queries[copy]
        table, key, value = self.tables[copy], *self.new_kv[copy]
        paged_decode_attention_triton(
            query[:d], self.key_cache, self.value_cache, table[:d], self.seq_lens[:d], scale,
            out=self.out[:d],
        )  # fmt: skip
        paged_attention_triton(
            query[d:], key[d:], value[d:], self.key_cache, self.value_cache, table[d:],
            self.query_start_loc[d:] - d, self.seq_lens[d:], scale, out=self.out[d:],
        )  # fmt: skip
        return self.out


# Launch options of the varlen kernel timed with --sweep (tiles, warps, stages).
CONFIG_SWEEP = {
    "m64 n64 w4 s3 paired": {
        "BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "PAIRED_TILES": True,
    },
    "m128 n128 w8 s3": {
        "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3, "PAIRED_TILES": False,
    },
    "m128 n128 w4 s2": {
        "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2, "PAIRED_TILES": False,
    },
    "m64 n128 w4 s2 paired": {
        "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2, "PAIRED_TILES": True,
    },
    "m128 n64 w8 s3": {
        "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "PAIRED_TILES": False,
    },
    # v21: query tiles through a tensor descriptor
    "query descriptor": {"QUERY_DESCRIPTOR": True},
    # prefill_options' choice for short sequences, whatever the table's width
    "short tiles": {
        "BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "PAIRED_TILES": True,
        "QUERY_DESCRIPTOR": True,
    },
}  # fmt: skip


def bench_case(
    name: str,
    groups: list[tuple[int, int, int]],
    table_tokens: int = 0,
    sweep: bool | list[str] = False,
    rows: int = 0,
) -> list[dict]:
    """sweep: True for every option of CONFIG_SWEEP, or the names of some."""
    case = Case(groups, table_tokens, rows)
    expected = case.sdpa(0)
    variants = {"varlen": case.varlen}
    if sweep:
        for config_name in CONFIG_SWEEP if sweep is True else sweep:
            config = CONFIG_SWEEP[config_name]
            variants[f"varlen {config_name}"] = lambda copy, config=config: case.varlen(
                copy, config
            )
    if 0 < case.num_decodes < len(case.seqs):
        variants["split"] = case.split
    if case.num_decodes == len(case.seqs):
        variants["decode kernel"] = case.decode
    if all(seq_len == q_len for seq_len, q_len in case.seqs):
        variants["varlen no context"] = lambda copy: case.varlen(copy, cached_context=False)
    for variant, fn in variants.items():
        check(f"{name} {variant} vs sdpa", rel_err(fn(0).clone(), expected), 1e-2)
    timed = {"sdpa": case.sdpa, **variants}
    calls = {label: (lambda fn=fn: fn(case.pick())) for label, fn in timed.items()}
    eager = {label: [] for label in calls}
    for _ in range(ROUNDS):
        for label, fn in calls.items():
            eager[label].append(bench_ms(fn))
    graph = {label: bench_graph_ms(fn, 10) for label, fn in calls.items()}
    rows = []
    for variant in variants:
        rows.append(
            {
                "case": name,
                "variant": variant,
                "eager ms": statistics.median(eager[variant]),
                "eager / sdpa": statistics.median(eager[variant])
                / statistics.median(eager["sdpa"]),
                "graph ms": graph[variant],
                "graph / sdpa": graph[variant] / graph["sdpa"],
                "sdpa graph ms": graph["sdpa"],
                "KV GB/s (graph)": case.kv_bytes / graph[variant] / 1e6,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument(
        "--table-tokens",
        type=int,
        default=0,
        help="widen every block table to this many tokens, as a CUDA graph's static table",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="pad the step with empty sequences to this many rows, as a CUDA graph's",
    )
    parser.add_argument("--sweep", action="store_true", help="also time other launch options")
    parser.add_argument(
        "--configs", default="", help="comma-separated names from the sweep to time (not all)"
    )
    args = parser.parse_args()
    sweep = args.sweep or [name for name in args.configs.split(",") if name]
    torch.manual_seed(0)
    print(
        f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}, "
        f"Python {sys.version.split()[0]}; {datetime.date.today()}",
        flush=True,
    )
    print(f"copy bandwidth {copy_bandwidth_gbs(device=DEVICE):.0f} GB/s", flush=True)
    rows = []
    for name in args.cases.split(","):
        rows += bench_case(name, CASES[name], args.table_tokens, sweep, args.rows)
        torch.cuda.empty_cache()
    header = list(rows[0]) if rows else []
    print_markdown_table(
        header,
        [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows],
    )
    if FAILURES:
        print(f"FAILED checks: {FAILURES}")
        sys.exit(1)


if __name__ == "__main__":
    main()
