"""Build a model from a Hugging Face checkpoint directory.

The module tree is created on the ``meta`` device (no memory, no random init), materialised
empty on the target device, then every parameter is filled from ``*.safetensors`` (a single
file or a sharded ``model.safetensors.index.json``). Loading fails loudly if any parameter is
left unfilled or a checkpoint tensor has no destination, so a silent half-loaded model is
impossible.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import torch
from torch import nn

from radixlm.errors import ModelLoadError
from radixlm.models import get_model_class
from radixlm.models.model_config import ModelConfig

logger = logging.getLogger(__name__)

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _safetensors_files(model_path: str) -> list[str]:
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_path, s) for s in shards]
    files = sorted(f for f in os.listdir(model_path) if f.endswith(".safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_path}")
    return [os.path.join(model_path, f) for f in files]


def iter_checkpoint(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in _safetensors_files(model_path):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_model(
    cfg: ModelConfig, model_path: str, dtype: torch.dtype, device: torch.device, max_positions: int
) -> nn.Module:
    cls = get_model_class(cfg.architecture)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = cls(cfg, max_positions, device=device)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    _load_weights(model, model_path)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_weights(model: nn.Module, model_path: str) -> None:
    params = dict(model.named_parameters())
    # Track filled rows per parameter so a missing q/k/v shard is detected too.
    filled: dict[str, int] = {name: 0 for name in params}
    tied = getattr(model, "lm_head", None) is None
    for name, tensor in iter_checkpoint(model_path):
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name.startswith("lm_head.")):
            continue
        target, rows = _route(model, name)
        if target not in params:
            raise ModelLoadError(f"checkpoint tensor {name!r} has no matching parameter")
        param = params[target]
        if rows is None:
            if tuple(tensor.shape) != tuple(param.shape):
                raise ModelLoadError(
                    f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(param.shape)}"
                )
            param.data.copy_(tensor)
            filled[target] += param.shape[0]
        else:
            start, size = rows
            if tensor.shape[0] != size or tuple(tensor.shape[1:]) != tuple(param.shape[1:]):
                raise ModelLoadError(f"{name}: shape {tuple(tensor.shape)} does not fit {target}")
            param.data[start : start + size].copy_(tensor)
            filled[target] += size
    missing = [n for n, p in params.items() if filled[n] != p.shape[0]]
    if missing:
        raise ModelLoadError(f"checkpoint {model_path} is missing weights for {missing[:8]}")
    logger.debug("loaded %d parameters from %s", len(params), model_path)


def _route(model: nn.Module, name: str) -> tuple[str, tuple[int, int] | None]:
    """Map a checkpoint name to (parameter name, row range within a fused parameter or None)."""
    for fused, part, shard in getattr(model, "stacked_params", ()):
        marker = f".{part}."
        if marker in name:
            return name.replace(marker, f".{fused}."), model.shard_offsets(fused, shard)
    return name, None
