"""The attention references on the CPU, which are the executor's CPU path.

Run from the repository root: `python3 -m benchmarks.reference_cpu`. The
default model's attention shape (9 query / 3 kv heads x 64, float32, block size
16, shuffled block tables): fresh prompts, a chunked prefill after cached
context, mixed steps (decodes beside a prompt chunk), and decode batches (also
as the varlen reference's decode rows), each timed as the median of 5 calls
(after one untimed call), with its relative error against the same reference
run in float64. Figures depend on the machine's cores: compare within one run, or
runs of this script on one machine.
"""

import statistics
import time

import torch

from benchmarks.gpu_timing import rel_err
from benchmarks.paged_inputs import in_float64, make_paged, new_tokens_kv
from pagedserve.kernels.paged_attention_reference import paged_attention_reference
from pagedserve.kernels.paged_decode_attention_reference import paged_decode_attention_reference

CPU = torch.device("cpu")
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 9, 3, 64  # blocks of 16 tokens (paged_inputs.BLOCK_SIZE)
# (label, [(seq_len, new tokens)] per sequence)
PREFILLS = [
    ("prefill 1 x 1024", [(1024, 1024)]),
    ("prefill 4 x 256", [(256, 256)] * 4),
    ("chunked 512 new after 1536 cached", [(2048, 512)]),
    # Mixed steps: decodes beside a prompt chunk (the scheduler's decodes first).
    ("mixed 64 decodes x 300 + 128 new after 256 cached", [(300, 1)] * 64 + [(384, 128)]),
    ("mixed 16 decodes x 1024 + 512 fresh", [(1024, 1)] * 16 + [(512, 512)]),
]
DECODES = [("decode 32 x 1024", 32, 1024), ("decode 256 x 300", 256, 300)]


def median_ms(fn) -> float:
    fn()
    times = []
    for _ in range(5):
        started_s = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started_s) * 1e3)
    return statistics.median(times)


def one_query_per_sequence(decode_args: tuple) -> tuple:
    """paged_attention_reference's arguments for a decode batch: each
    sequence's new key and value are the cache's entries at its last position."""
    query, key_cache, value_cache, tables, lens, scale = decode_args
    block_size = key_cache.shape[1]
    last = lens.long() - 1
    blocks = tables.gather(1, (last // block_size)[:, None])[:, 0].long()
    key, value = key_cache[blocks, last % block_size], value_cache[blocks, last % block_size]
    starts = torch.arange(len(lens) + 1, dtype=torch.int32)
    return (query, key, value, key_cache, value_cache, tables, starts, lens, scale)


def main() -> None:
    torch.manual_seed(0)
    scale = HEAD_DIM**-0.5
    rows = []
    for label, seqs in PREFILLS:
        key_cache, value_cache, tables, lens = make_paged(
            [n for n, _ in seqs], NUM_KV_HEADS, HEAD_DIM, torch.float32, device=CPU
        )
        key, value = new_tokens_kv(key_cache, value_cache, tables[0], seqs)
        query = torch.randn(key.shape[0], NUM_HEADS, HEAD_DIM)
        starts = torch.tensor([0] + [q for _, q in seqs]).cumsum(0).to(torch.int32)
        args = (query, key, value, key_cache, value_cache, tables[0], starts, lens, scale)
        expected = paged_attention_reference(*in_float64(args))
        rows.append((label, median_ms(lambda args=args: paged_attention_reference(*args)),
                     rel_err(paged_attention_reference(*args), expected)))  # fmt: skip
    for label, num_seqs, seq_len in DECODES:
        key_cache, value_cache, tables, lens = make_paged(
            [seq_len] * num_seqs, NUM_KV_HEADS, HEAD_DIM, torch.float32, device=CPU
        )
        query = torch.randn(num_seqs, NUM_HEADS, HEAD_DIM)
        args = (query, key_cache, value_cache, tables[0], lens, scale)
        expected = paged_decode_attention_reference(*in_float64(args))
        rows.append((label, median_ms(lambda args=args: paged_decode_attention_reference(*args)),
                     rel_err(paged_decode_attention_reference(*args), expected)))  # fmt: skip
        # The same decode through the varlen reference (its decode rows; one
        # sequence at a time before it grouped them too).
        varlen_args = one_query_per_sequence(args)
        rows.append((f"{label}, as varlen decode rows",
                     median_ms(lambda args=varlen_args: paged_attention_reference(*args)),
                     rel_err(paged_attention_reference(*varlen_args), expected)))  # fmt: skip
    print(f"\nCPU ({torch.get_num_threads()} threads), torch {torch.__version__}, float32, "
          f"{NUM_HEADS}/{NUM_KV_HEADS} heads x {HEAD_DIM}\n")  # fmt: skip
    print("| call | ms (median of 5) | error vs float64 |\n|---|---|---|")
    for label, ms, error in rows:
        print(f"| {label} | {ms:.2f} | {error:.1e} |")


if __name__ == "__main__":
    main()
