"""Steps with prompt tokens replayed from CUDA graphs, one graph per padded token count.

A step that is not decode-only (fresh prompts, a chunk of a long prompt,
prompts beside decoding sequences) runs the forward pass eagerly otherwise:
about 12 launches a layer from Python, which for a small model takes longer
than the GPU's work (docs/gpu.md: 21-25 ms a step for the default model on an
H100, against about 4 ms replayed). Every new request's first token waits for
such a step, so its time is the time to first token.

A graph's shapes and addresses are fixed, so the step's tokens are copied into
static buffers, padded up to the next captured token count T, with S =
min(T, max_num_seqs) sequence rows (a step of T tokens has at most T sequences):

- input_ids, positions [T] int64; padding tokens: token 0 at position 0;
- slot_mapping [T] int64; padding tokens: PADDING_SLOT (written nowhere);
- query_start_loc [S + 1] int32: the real sequences' tokens first, then one
  padding sequence that owns every padding token, then empty sequences (both
  attention paths skip a sequence without new tokens);
- seq_lens [S] int32: the padding sequence's is its token count (it has no
  cached context, so it never reads its block table row); empty ones, 0;
- block_tables [S, max_blocks_per_seq] int32, one width that holds the longest
  context, as in decode_graphs.py;
- logits_indices [S] int64: the rows sampled, first; logits [S, vocab] float32.

Each token count has a graph per variant (step_graphs.GraphVariant), in the
order a step tries them: fresh prompts only (the attention kernel without
its block-table path, the table at its narrowest); then cached_context=True
(a step may mix fresh prompts with sequences that have context) at each
table width where the kernel's launch options change
(kernels.prefill_table_widths: below 4k tokens and the longest context).
The kernels choose their tiles from the width they are given, so a step
takes the options an eager launch of its own tables would. Padding rows
never change the real rows' values, but a GEMM of more rows may round
differently. Where nothing is captured (the CPU), replay runs the same
forward pass eagerly on the same buffers (step_graphs.py).
"""

from __future__ import annotations

import functools

import torch

from pagedserve import kernels
from pagedserve.executor.llama import LlamaForCausalLM
from pagedserve.executor.step_graphs import GraphVariant, StepGraphs

# The smallest token count captured: short prompts all round up to it.
_MIN_GRAPH_TOKENS = 16
# A bound on capture time and memory (static logits of min(T, max_num_seqs)
# rows; intermediates of T tokens). Steps of more tokens run eagerly, where the
# GPU's work is larger and the launches' share smaller.
MAX_GRAPH_TOKENS = 2048


def graph_token_counts(max_num_batched_tokens: int) -> list[int]:
    """Token counts to capture for a scheduler of max_num_batched_tokens tokens
    a step: powers of two from 16, then that bound itself (at most
    MAX_GRAPH_TOKENS), ascending."""
    largest = min(max_num_batched_tokens, MAX_GRAPH_TOKENS)
    counts = []
    count = _MIN_GRAPH_TOKENS
    while count < largest:
        counts.append(count)
        count *= 2
    return counts + [largest]


class PrefillGraphs(StepGraphs):
    """Static inputs and outputs of steps with prompt tokens for a ladder of
    token counts, and one captured graph per count and variant once capture()
    ran."""

    decode_only = False

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: torch.Tensor,  # [layers, 2, num_blocks, block_size, Hkv, D]
        block_size_tokens: int,
        token_counts: list[int],
        max_num_seqs: int,
        max_context_tokens: int,
        # Block-table widths of the variants, ascending, the last holding
        # max_context_tokens; None: where the attention kernel's launch
        # options change (kernels.prefill_table_widths).
        table_widths: list[int] | None = None,
    ):
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        self.max_num_seqs = max_num_seqs
        self._table_widths = table_widths
        super().__init__(model, kv_pool, block_size_tokens, token_counts, max_context_tokens)

    def _variants(self, size: int) -> list[GraphVariant]:
        return self._attention_variants  # every token count alike

    @functools.cached_property
    def _attention_variants(self) -> list[GraphVariant]:
        widths = self._table_widths or kernels.prefill_table_widths(
            self.max_blocks_per_seq,
            self.block_size_tokens,
            self.model.config.head_dim,
            self.kv_pool.dtype,
        )
        if widths != sorted(set(widths)) or widths[-1] != self.max_blocks_per_seq:
            raise ValueError(
                f"table_widths {widths}: want ascending widths ending at {self.max_blocks_per_seq}"
            )
        fresh = GraphVariant(widths[0], cached_context=False)
        return [fresh] + [GraphVariant(width) for width in widths]

    def num_seq_rows(self, size: int) -> int:
        """S: a step of size tokens has at most that many sequences."""
        return min(size, self.max_num_seqs)

    def _load_sequence_rows(
        self, num_tokens: int, query_start_loc: list[int], seq_lens: list[int]
    ) -> None:
        """One padding sequence holds every padding token; the rows after it
        are empty. With no row left for it, the padding tokens belong to no
        sequence: attention leaves their rows unwritten, and nothing reads them."""
        num_padding_rows = self.num_seq_rows(num_tokens) - len(seq_lens)
        num_padding_tokens = num_tokens - query_start_loc[-1]
        padding_seq_lens = ([num_padding_tokens] + [0] * num_padding_rows)[:num_padding_rows]
        self._copy_rows(self.query_start_loc, query_start_loc + [num_tokens] * num_padding_rows)
        self._copy_rows(self.seq_lens, seq_lens + padding_seq_lens)

    def _fill_padding_rows(self) -> None:
        """Empty sequences only: capture reads no block. Attention leaves the
        rows of tokens no sequence owns unwritten; their values are never read."""
        self.query_start_loc.zero_()
        self.seq_lens.zero_()
