"""Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) over a paged KV cache.

Module and parameter names match HF transformers' checkpoints, so weights load
by name. Every op between the projections is one of pagedserve.kernels: on
CUDA a Triton kernel each (the residual add fused into the RMSNorm after it,
rotary embedding of q and k in one launch, SiLU-and-mul in one), about 12
launches a layer instead of about 40 torch ops; on the CPU their torch
references, which do transformers' float32 operations in its order (RMSNorm
in float32, rotary tables from the same inverse frequencies), so that greedy
outputs are token-identical to `generate`. Attention reads and writes K and V
only through the pool and the block tables; there is no per-sequence cache
anywhere.

The whole batch is flattened: `num_tokens` new tokens of all sequences back to
back, described by an AttentionBatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve import kernels
from pagedserve.executor.model_config import ModelConfig


@dataclass
class AttentionBatch:
    """Where each new token's K and V go and what each query attends to."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: block_id * block_size + offset
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: offsets of each sequence's tokens
    seq_lens: torch.Tensor  # [num_seqs] int32: cached plus new tokens of each sequence
    # Every sequence has exactly one new token: the decode kernel applies.
    decode_only: bool
    # Some sequence has tokens cached before this step's new ones (chunked
    # prefill, a prefix-cache hit, decode); False lets the prefill kernel drop
    # its block-table path.
    cached_context: bool = True
    # [1 + 2 x capacity] int32: how long decode rows beside prompt chunks split
    # their keys (kernels.plan_decode_row_split); None splits none.
    decode_split: torch.Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x: [T, size]. Without a residual: the normed x. With one: (the normed
        x + residual, x + residual), the residual add fused into the norm's pass
        on CUDA. Statistics in fp32, rounding as transformers' LlamaRMSNorm."""
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps)
        return kernels.add_rms_norm(x, residual, self.weight, self.eps)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.x long-context frequency scaling (the 'llama3' rope_type)."""
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding from one cos/sin table of every position."""

    def __init__(self, config: ModelConfig, device: torch.device | None = None):
        super().__init__()
        dim = config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
        inv_freq = 1.0 / (config.rope_theta**exponents)
        if config.rope_scaling is not None:
            inv_freq = _llama3_inv_freq(inv_freq, config.rope_scaling)
        positions = torch.arange(config.max_context_tokens, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]  # [max_positions, dim / 2], exact products
        angles = torch.cat((freqs, freqs), dim=-1).to(device)  # [max_positions, dim]
        # cos and sin are taken on the device the model runs on, as transformers
        # does: the CPU's and the GPU's last bits differ, enough to flip a near-tie.
        # The same [max_positions, dim] calls as transformers', then the halves
        # kernels.rotary_embedding reads: cos in the first, sin in the second.
        half = dim // 2
        cos_sin = torch.cat((angles.cos()[:, :half], angles.sin()[:, :half]), dim=-1)
        self.register_buffer("cos_sin_cache", cos_sin, persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
        """Rotates q [T, Hq, D] and k [T, Hkv, D] in place, for positions [T]:
        in fp32, one rounding per output (in float32, transformers' operations:
        x * cos + rotate_half(x) * sin)."""
        kernels.rotary_embedding(positions, q, k, self.cos_sin_cache)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        hidden, bias = config.hidden_size, config.qkv_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        positions: torch.Tensor,  # [T]
        rotary: RotaryEmbedding,
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, Hkv, D]
        batch: AttentionBatch,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        q = self.q_proj(x).view(num_tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per head: rows of head_dim
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(q.shape)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(k.shape)
        rotary(positions, q, k)
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        kernels.write_kv_cache(k, v, key_cache, value_cache, batch.slot_mapping)
        if batch.decode_only:
            out = kernels.paged_decode_attention(
                q, key_cache, value_cache, batch.block_tables, batch.seq_lens, self.scale
            )
        else:
            # The new tokens' K/V also go in directly: a prompt with no cached
            # prefix then reads contiguous tiles instead of gathering blocks.
            out = kernels.paged_attention(
                q,
                k,
                v,
                key_cache,
                value_cache,
                batch.block_tables,
                batch.query_start_loc,
                batch.seq_lens,
                self.scale,
                cached_context=batch.cached_context,
                decode_split=batch.decode_split,
            )
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, positions, rotary, kv_cache, batch):
        """x: [T, hidden], the previous layer's output; residual: the residual
        stream before it (None at the first layer, whose x is the embeddings).
        Returns (this layer's output, the stream before it): each residual add
        is done by the norm after it, in one pass."""
        if residual is None:
            residual, hidden = x, self.input_layernorm(x)
        else:
            hidden, residual = self.input_layernorm(x, residual)
        hidden = self.self_attn(hidden, positions, rotary, kv_cache, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderBody(nn.Module):
    """The `model.` prefix of HF checkpoints: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DecoderBody(config)
        self.rotary = RotaryEmbedding(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def output_weight(self) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_pool: torch.Tensor,  # [layers, 2, num_blocks, block_size, Hkv, D]
        batch: AttentionBatch,
        logits_indices: torch.Tensor,  # [num_seqs]: the token whose logits each sequence needs
    ) -> torch.Tensor:
        """Returns float32 logits [num_seqs, vocab] for the tokens at logits_indices."""
        x = self.model.embed_tokens(input_ids)  # [T, hidden]
        residual = None
        for layer_index, layer in enumerate(self.model.layers):
            x, residual = layer(x, residual, positions, self.rotary, kv_pool[layer_index], batch)
        # The last residual add, only for the rows whose logits are needed.
        x, _ = self.model.norm(x[logits_indices], residual[logits_indices])  # [num_seqs, hidden]
        return F.linear(x, self.output_weight()).float()
