"""Build a model from a Hugging Face checkpoint directory.

The module tree is created on the ``meta`` device (no memory, no random init), materialised
empty on the target device, then every parameter is filled from ``*.safetensors`` (a single
file or a sharded ``model.safetensors.index.json``), read with plain file reads straight into
the parameters. Loading fails loudly if any parameter is
left unfilled or a checkpoint tensor has no destination, so a silent half-loaded model is
impossible.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

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


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives inside a ``.safetensors`` file."""

    path: str
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_index(path: str) -> list[TensorEntry]:
    """Parse a safetensors header: 8-byte little-endian length, then a JSON table."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        entries.append(
            TensorEntry(
                path,
                name,
                _ST_DTYPES[info["dtype"]],
                tuple(info["shape"]),
                base + start,
                end - start,
            )
        )
    return entries


def iter_checkpoint_entries(model_path: str) -> Iterator[TensorEntry]:
    for path in _safetensors_files(model_path):
        yield from read_safetensors_index(path)


def read_into(entry: TensorEntry, f: BinaryIO, dest: torch.Tensor) -> None:
    """Copy one checkpoint tensor into ``dest`` (same shape), converting dtype if needed.

    NOTE: plain file reads, not mmap: mapped checkpoint pages would count in RSS on top of the
    weights while loading. With matching dtype on CPU the bytes land directly in ``dest``.
    """
    f.seek(entry.offset)
    direct = dest.dtype == entry.dtype and dest.device.type == "cpu" and dest.is_contiguous()
    target = dest if direct else torch.empty(entry.shape, dtype=entry.dtype)
    if entry.nbytes:
        buf = memoryview(target.view(-1).view(torch.uint8).numpy())
        if f.readinto(buf) != entry.nbytes:
            raise ModelLoadError(f"{entry.path}: truncated data for tensor {entry.name}")
    if not direct:
        dest.copy_(target)


def load_model(
    cfg: ModelConfig,
    model_path: str,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    load_format: str = "auto",
    seed: int = 0,
) -> nn.Module:
    """Build the model for ``cfg`` and fill its weights from the checkpoint at ``model_path``;
    ``load_format="dummy"`` draws random weights on ``device`` instead (benchmarks of a model
    shape without its checkpoint: only ``config.json`` is read)."""
    cls = get_model_class(cfg.architecture)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = cls(cfg, max_positions, device=device)
    finally:
        torch.set_default_dtype(previous)
    _materialize(model, device)
    if load_format == "dummy":
        _random_weights(model, seed)
    else:
        _load_weights(model, model_path)
    model.eval()
    model.requires_grad_(False)
    return model


def _materialize(model: nn.Module, device: torch.device) -> None:
    """Give every meta parameter/buffer real (uninitialised) storage on ``device``.

    NOTE: not ``Module.to_empty``: its ``empty_like`` on meta tensors goes through torch._refs,
    which imports sympy and torch.fx's symbolic shapes (~40 MB resident) for nothing.
    """
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                data = torch.empty(p.shape, dtype=p.dtype, device=device)
                module._parameters[name] = nn.Parameter(data, requires_grad=False)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)


@torch.no_grad()
def _random_weights(model: nn.Module, seed: int) -> None:
    """N(0, 0.02) matrices and embeddings, unit norm weights, zero biases; drawn on the
    parameters' device (an 8B model takes seconds on a GPU)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.normal_(0.0, 0.02, generator=gen)


def _load_weights(model: nn.Module, model_path: str) -> None:
    params = dict(model.named_parameters())
    # Track filled rows per parameter so a missing q/k/v shard is detected too.
    filled: dict[str, int] = {name: 0 for name in params}
    tied = getattr(model, "lm_head", None) is None
    entries = list(iter_checkpoint_entries(model_path))
    handles: dict[str, BinaryIO] = {}
    progress = _progress(entries)
    try:
        for entry in progress:
            name = entry.name
            if name.endswith(_IGNORED_SUFFIXES) or (tied and name.startswith("lm_head.")):
                continue
            target, rows = _route(model, name)
            if target not in params:
                raise ModelLoadError(f"checkpoint tensor {name!r} has no matching parameter")
            param = params[target]
            if rows is None:
                if entry.shape != tuple(param.shape):
                    raise ModelLoadError(
                        f"{name}: checkpoint shape {entry.shape} != model {tuple(param.shape)}"
                    )
                dest = param.data
            else:
                start, size = rows
                if entry.shape[0] != size or entry.shape[1:] != tuple(param.shape[1:]):
                    raise ModelLoadError(f"{name}: shape {entry.shape} does not fit {target}")
                dest = param.data[start : start + size]
            if entry.path not in handles:
                handles[entry.path] = open(entry.path, "rb")  # noqa: SIM115 closed below
            read_into(entry, handles[entry.path], dest)
            filled[target] += dest.shape[0]
    finally:
        progress.close()
        for f in handles.values():
            f.close()
    missing = [n for n, p in params.items() if filled[n] != p.shape[0]]
    if missing:
        raise ModelLoadError(f"checkpoint {model_path} is missing weights for {missing[:8]}")
    logger.debug("loaded %d parameters from %s", len(params), model_path)


PROGRESS_MIN_BYTES = 64 << 20  # smaller checkpoints load too fast for a bar to say anything


def _progress(entries: list[TensorEntry]) -> Any:
    """A tqdm bar over the checkpoint's tensors, counted in bytes and labelled by shard, on
    stderr (the terminal, or the server log: one refresh every 2 s at most)."""
    from tqdm import tqdm

    total = sum(e.nbytes for e in entries)
    shards = len({e.path for e in entries})
    return tqdm(
        entries,
        total=len(entries),
        desc=f"loading weights ({shards} shard{'s' if shards != 1 else ''}, "
        f"{total / 2**30:.2f} GiB)",
        unit="tensor",
        mininterval=2.0,
        disable=total < PROGRESS_MIN_BYTES,
    )


def _route(model: nn.Module, name: str) -> tuple[str, tuple[int, int] | None]:
    """Map a checkpoint name to (parameter name, row range within a fused parameter or None)."""
    for fused, part, shard in getattr(model, "stacked_params", ()):
        marker = f".{part}."
        if marker in name:
            return name.replace(marker, f".{fused}."), model.shard_offsets(fused, shard)
    return name, None
