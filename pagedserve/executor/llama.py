"""Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) over a paged KV cache.

Module and parameter names match HF transformers' checkpoints, so weights load
by name. The arithmetic follows transformers' float32 path op for op (RMSNorm in
float32, rotary tables from the same inverse frequencies) so that greedy outputs
are token-identical to `generate`. Attention reads and writes K and V only
through the pool and the block tables (pagedserve.kernels); there is no
per-sequence cache anywhere.

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


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        variance = x32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x32 * torch.rsqrt(variance + self.eps)).to(input_dtype)


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
    """Rotary position embedding with cos/sin tables for every position."""

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
        self.register_buffer("cos_table", angles.cos(), persistent=False)
        self.register_buffer("sin_table", angles.sin(), persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        # positions: [T]; q: [T, Hq, D]; k: [T, Hkv, D]
        cos = self.cos_table[positions].to(q.dtype)[:, None, :]  # [T, 1, D]
        sin = self.sin_table[positions].to(q.dtype)[:, None, :]
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        return q, k


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
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(positions, q, k)
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
            )
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, positions, rotary, kv_cache, batch):
        x = x + self.self_attn(self.input_layernorm(x), positions, rotary, kv_cache, batch)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        for layer_index, layer in enumerate(self.model.layers):
            x = layer(x, positions, self.rotary, kv_pool[layer_index], batch)
        x = self.model.norm(x[logits_indices])  # [num_seqs, hidden]
        return F.linear(x, self.output_weight()).float()
