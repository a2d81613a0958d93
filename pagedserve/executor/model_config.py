"""The few numbers of an HF config.json that the executor needs, read without transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Model families whose weights and forward pass llama.py implements.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or a setting of it is not implemented."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_context_tokens: int
    tie_word_embeddings: bool
    # q/k/v projections carry a bias (Qwen2, or attention_bias in Llama configs).
    qkv_bias: bool
    # Per-head RMSNorm on q and k before rotary embedding (Qwen3).
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    # Llama 3 style rotary scaling parameters, or None for plain RoPE.
    rope_scaling: dict | None = field(default=None, hash=False, compare=False)


def _as_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope_settings(raw: dict) -> tuple[float, dict | None]:
    params = raw.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or (params if params.get("rope_type") else None)
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type == "llama3":
        return theta, dict(scaling)
    raise UnsupportedModelError(f"rope scaling type {rope_type!r} is not supported")


def load_model_config(path: Path, name: str | None = None) -> ModelConfig:
    """Reads path/config.json; raises UnsupportedModelError for other architectures."""
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    num_heads = int(raw["num_attention_heads"])
    head_dim = int(raw.get("head_dim") or raw["hidden_size"] // num_heads)
    generation = {}
    if (path / "generation_config.json").is_file():
        generation = json.loads((path / "generation_config.json").read_text())
    eos = _as_tuple(generation.get("eos_token_id", raw.get("eos_token_id")))
    theta, scaling = _rope_settings(raw)
    return ModelConfig(
        name=name or path.name,
        model_type=model_type,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        max_context_tokens=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        qk_norm=model_type == "qwen3",
        eos_token_ids=eos,
        bos_token_id=raw.get("bos_token_id"),
        rope_scaling=scaling,
    )
