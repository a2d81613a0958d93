"""Builds a model on its device and loads safetensors weights into it, with a progress bar."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from pagedserve.executor.llama import LlamaForCausalLM, RotaryEmbedding
from pagedserve.executor.model_config import ModelConfig

log = logging.getLogger(__name__)


class WeightLoadError(RuntimeError):
    """The checkpoint's tensors do not match the model (missing, extra, or misshapen)."""


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def load_model(
    config: ModelConfig,
    path: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    random_seed: int | None = None,
) -> LlamaForCausalLM:
    """Returns the model in eval mode on device.

    With path None, weights are random (normal, std 0.02, seeded by random_seed):
    for benchmarks of large shapes without a checkpoint. Raises WeightLoadError
    when the checkpoint does not cover every parameter exactly.
    """
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    # Rotary tables are computed, not loaded: rebuild them for real on the device.
    model.rotary = RotaryEmbedding(config, device)
    params = dict(model.named_parameters())
    if path is None:
        generator = torch.Generator(device="cpu").manual_seed(random_seed or 0)
        for name, param in params.items():
            values = torch.randn(param.shape, generator=generator) * 0.02
            if name.endswith("norm.weight"):
                values = torch.ones(param.shape)
            param.data.copy_(values)
        return model.eval()
    loaded: set[str] = set()
    files = _weight_files(path)
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            total += len(list(handle.keys()))
    with tqdm(total=total, desc=f"loading {config.name}", unit="tensor", leave=False) as bar:
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                names = set(handle.keys())
                for stored_name in names:
                    bar.update(1)
                    name = stored_name
                    if name == "lm_head.weight" and config.tie_word_embeddings:
                        if "model.embed_tokens.weight" in names:
                            continue  # tied: the embeddings serve as the output layer, as in HF
                        name = "model.embed_tokens.weight"  # stored under the other name only
                    if name not in params:
                        if "rotary_emb" in name:
                            continue
                        raise WeightLoadError(f"{file.name}: unexpected tensor {name}")
                    tensor = handle.get_tensor(stored_name)
                    if tuple(tensor.shape) != tuple(params[name].shape):
                        raise WeightLoadError(
                            f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                            f"model expects {tuple(params[name].shape)}"
                        )
                    params[name].data.copy_(tensor.to(dtype))
                    loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise WeightLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    log.info("loaded %d tensors from %s (%s, %s)", len(loaded), path, device, dtype)
    return model.eval()
