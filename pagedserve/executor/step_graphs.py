"""Steps replayed from CUDA graphs over static buffers: what decode_graphs.py
(one graph per padded batch size) and prefill_graphs.py (one per padded token
count) share.

A graph's shapes and addresses are fixed, so a step's flat inputs are copied
into static buffers sized for the largest graph, padded up to the next
captured size, and every graph reads slices of them and writes a static
logits buffer. Where nothing is captured (the CPU, or before capture), replay
runs the same forward pass eagerly on the same buffers, so the padded path is
one code path, tested on the CPU.

A graph's attention also fixes what the kernels choose from shapes: the
block table's width (read as the longest sequence) and whether any sequence
has cached context. A set of graphs may hold variants of each size
(GraphVariant): the same static buffers, the table viewed narrower, or the
fresh-prompt attention; a step replays the first variant that holds it.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

import torch

from pagedserve import kernels
from pagedserve.executor.llama import AttentionBatch, LlamaForCausalLM
from pagedserve.kernels import PADDING_SLOT


@dataclass(frozen=True)
class GraphVariant:
    """How a graph's attention is called: block tables viewed this many
    columns wide, and whether a sequence may have cached context."""

    table_width: int
    cached_context: bool = True

    def holds(self, max_blocks_per_seq: int, cached_context: bool) -> bool:
        """True if a step of tables this wide (with cached context or not) runs right here."""
        return max_blocks_per_seq <= self.table_width and (
            self.cached_context or not cached_context
        )


@dataclass
class CaptureReport:
    sizes: list[int]  # batch sizes (decode) or token counts (prefill), ascending
    num_graphs: int  # a graph per size and variant
    seconds: float
    # Device memory the graphs hold (their share of the pool), beyond the static buffers.
    memory_bytes: int


class StepGraphs:
    """Static inputs and outputs of a step for a ladder of padded sizes, and
    one captured graph per size once capture() ran. A size is the graph's
    token count (decode: one token per sequence). Subclasses say how many
    sequence rows a size has, whether its steps are decode-only, and how the
    sequence rows (seq_lens, query_start_loc) are padded."""

    decode_only: bool  # the AttentionBatch's: the decode kernel or the varlen one

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: torch.Tensor,  # [layers, 2, num_blocks, block_size, Hkv, D]
        block_size_tokens: int,
        sizes: list[int],
        max_context_tokens: int,
    ):
        if not sizes or min(sizes) < 1:
            raise ValueError(f"graph sizes must be >= 1, got {sizes}")
        self.model = model
        self.kv_pool = kv_pool
        self.device = device = kv_pool.device
        self.sizes = sorted(set(sizes))
        self.block_size_tokens = block_size_tokens
        self.max_blocks_per_seq = -(-max_context_tokens // block_size_tokens)
        num_tokens, num_rows = self.sizes[-1], self.num_seq_rows(self.sizes[-1])
        self.input_ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(num_tokens, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full(
            (num_tokens,), PADDING_SLOT, dtype=torch.int64, device=device
        )
        self.block_tables = torch.zeros(
            num_rows, self.max_blocks_per_seq, dtype=torch.int32, device=device
        )
        self.query_start_loc = torch.zeros(num_rows + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(num_rows, dtype=torch.int32, device=device)
        self.logits_indices = torch.zeros(num_rows, dtype=torch.int64, device=device)
        vocab_size = model.config.vocab_size
        self.logits = torch.zeros(num_rows, vocab_size, dtype=torch.float32, device=device)
        # The varlen kernel's plan for long decode rows (prefill graphs only:
        # decode-only steps take the decode kernel, which splits on its own).
        self.decode_split: torch.Tensor | None = None
        if not self.decode_only:
            capacity = kernels.split_capacity(model.config.num_kv_heads, device)
            self._no_split = kernels.no_split_plan(capacity)
            self.decode_split = torch.tensor(self._no_split, dtype=torch.int32, device=device)
        self.variants = {size: self._variants(size) for size in self.sizes}
        self._batches = {
            (size, variant): self._batch(size, variant)
            for size, variants in self.variants.items()
            for variant in variants
        }
        self._graphs: dict[tuple[int, GraphVariant], torch.cuda.CUDAGraph] = {}

    def _variants(self, size: int) -> list[GraphVariant]:
        """The variants of a size, in the order a step tries them (the last
        holds every step that fits the buffers)."""
        return [GraphVariant(self.max_blocks_per_seq)]

    def num_seq_rows(self, size: int) -> int:
        """Sequence rows (and logits rows) of the graph of this size."""
        raise NotImplementedError

    def _load_sequence_rows(
        self, size: int, query_start_loc: list[int], seq_lens: list[int]
    ) -> None:
        """Copies the step's query_start_loc and seq_lens, padded to the size's rows."""
        raise NotImplementedError

    def _fill_padding_rows(self) -> None:
        """The sequence rows of an all-padding step (what capture runs on)."""
        raise NotImplementedError

    def _batch(self, size: int, variant: GraphVariant) -> AttentionBatch:
        num_rows = self.num_seq_rows(size)
        return AttentionBatch(
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:num_rows, : variant.table_width],
            query_start_loc=self.query_start_loc[: num_rows + 1],
            seq_lens=self.seq_lens[:num_rows],
            decode_only=self.decode_only,
            cached_context=variant.cached_context,
            decode_split=self.decode_split if variant.cached_context else None,
        )

    def padded_size(self, num_tokens: int, num_seqs: int, max_blocks_per_seq: int) -> int | None:
        """The size (of the ladder) a step of num_tokens new tokens of num_seqs
        sequences runs at, padded, or None when it does not fit (too many tokens
        or sequences, or a block table wider than the static one): such a step
        runs eagerly."""
        if num_tokens > self.sizes[-1] or max_blocks_per_seq > self.max_blocks_per_seq:
            return None
        size = self.sizes[bisect.bisect_left(self.sizes, num_tokens)]
        return size if num_seqs <= self.num_seq_rows(size) else None

    def variant_for(self, size: int, max_blocks_per_seq: int, cached_context: bool) -> GraphVariant:
        """The first variant of size that holds a step that fits (padded_size)."""
        variants = self.variants[size]
        return next(v for v in variants if v.holds(max_blocks_per_seq, cached_context))

    @torch.inference_mode()
    def load(
        self,
        size: int,  # padded, from padded_size
        input_ids: list[int],  # [t]: every new token of the step
        positions: list[int],  # [t]
        slot_mapping: list[int],  # [t]
        block_tables: list[list[int]],  # [num_seqs][width], width <= max_blocks_per_seq
        query_start_loc: list[int],  # [num_seqs + 1]
        seq_lens: list[int],  # [num_seqs]
        logits_indices: list[int],  # [num_sampled]
        decode_split: list[int] | None = None,  # the step's plan; None splits no row
    ) -> None:
        """Copies a step into the static buffers, padded to size: one
        host-to-device copy per buffer. Padding tokens: token 0 at position 0,
        PADDING_SLOT (written nowhere)."""
        num_padding = size - len(input_ids)
        self._copy_rows(self.input_ids, input_ids + [0] * num_padding)
        self._copy_rows(self.positions, positions + [0] * num_padding)
        self._copy_rows(self.slot_mapping, slot_mapping + [PADDING_SLOT] * num_padding)
        self._load_sequence_rows(size, query_start_loc, seq_lens)
        num_rows = self.num_seq_rows(size)
        self._copy_rows(
            self.logits_indices, logits_indices + [0] * (num_rows - len(logits_indices))
        )
        # Only the real rows' first columns: the rest of the table keeps earlier
        # valid ids, which seq_lens keeps every row from reading past.
        self._copy_rows(self.block_tables, block_tables)
        if self.decode_split is not None:
            self._copy_rows(self.decode_split, decode_split or self._no_split)

    def _fill_padding(self) -> None:
        """Every token a padding token: what capture runs on, so it writes
        nothing into the pool."""
        self.input_ids.zero_()
        self.positions.zero_()
        self.slot_mapping.fill_(PADDING_SLOT)
        self.block_tables.zero_()
        self.logits_indices.zero_()
        if self.decode_split is not None:
            self._copy_rows(self.decode_split, self._no_split)
        self._fill_padding_rows()

    def inputs(
        self, size: int, variant: GraphVariant
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionBatch, torch.Tensor]:
        """(input_ids, positions, batch, logits_indices) of the static buffers at size."""
        return (
            self.input_ids[:size],
            self.positions[:size],
            self._batches[size, variant],
            self.logits_indices[: self.num_seq_rows(size)],
        )

    @staticmethod
    def _copy_rows(target: torch.Tensor, values: list) -> None:
        """values (a list, or a list of equal rows) into target's leading
        corner: one host-to-device copy."""
        host = torch.tensor(values, dtype=target.dtype)
        target[tuple(slice(0, n) for n in host.shape)].copy_(host, non_blocking=True)

    def replay(self, size: int, variant: GraphVariant) -> torch.Tensor:
        """Runs the forward pass on the static buffers at size: the variant's
        graph where one was captured, else eagerly. Returns the static logits
        [num_seq_rows(size), vocab], rows in logits_indices order
        (overwritten by the next replay)."""
        graph = self._graphs.get((size, variant))
        if graph is None:
            self._forward(size, variant)
        else:
            # The graph launches on the current device's stream: make it the pool's.
            with torch.cuda.device(self.device):
                graph.replay()
        return self.logits[: self.num_seq_rows(size)]

    @torch.inference_mode()
    def _forward(self, size: int, variant: GraphVariant) -> None:
        input_ids, positions, batch, logits_indices = self.inputs(size, variant)
        logits = self.model(input_ids, positions, self.kv_pool, batch, logits_indices)
        self.logits[: logits.shape[0]].copy_(logits)

    def capture(self, memory_pool=None) -> CaptureReport:
        """Captures one graph per size and variant, largest first, into memory_pool
        (torch.cuda.graph_pool_handle(), shared with the runner's other graphs;
        None: a new one). Graphs are replayed one at a time, so their
        intermediates may share memory, and the largest one's allocations serve
        the smaller ones. Each size runs once eagerly first, so that Triton and
        cuBLAS load its kernels outside the capture. CUDA only, and the kernels
        must be Triton's, which never sync. Raises ValueError off CUDA; torch's
        RuntimeError if an operation is not capturable."""
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        started_s = time.monotonic()
        if memory_pool is None:
            memory_pool = torch.cuda.graph_pool_handle()
        with torch.cuda.device(self.device):
            self._fill_padding()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            reserved_before = torch.cuda.memory_reserved()
            stream = torch.cuda.Stream()
            for size in reversed(self.sizes):
                for variant in self.variants[size]:
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        self._forward(size, variant)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=memory_pool, stream=stream):
                        self._forward(size, variant)
                    self._graphs[size, variant] = graph
            self._replay_each_once()
            torch.cuda.synchronize()
            # What stays reserved is the graphs' pool: the eager runs' memory went back.
            torch.cuda.empty_cache()
            memory_bytes = torch.cuda.memory_reserved() - reserved_before
        return CaptureReport(
            list(self.sizes), len(self._graphs), time.monotonic() - started_s, memory_bytes
        )

    def _replay_each_once(self) -> None:
        """The first launch of a graph also uploads it to the device (measured
        on an H100, default model: about 1 ms more than a replay, per graph):
        done here, not in a user's step. The buffers hold padding rows only,
        so nothing is written to the pool."""
        for graph in self._graphs.values():
            graph.replay()
