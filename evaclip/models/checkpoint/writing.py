"""Writing checkpoints: safetensors files, PyTorch ``.pt`` files (the official and open_clip releases' format)
and Hugging Face port folders (``config.json`` + ``model.safetensors``), all through :mod:`evaclip.outputs`:
atomically (a crash never leaves half a checkpoint), as regular files with the usual permissions; a symlink,
FIFO or device in the way is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file as st_save

from evaclip.errors import CheckpointError
from evaclip.models.checkpoint.adapters import HF
from evaclip.models.config import CLIPConfig
from evaclip.models.hf_port import config_to_hf
from evaclip.outputs import atomic_path, atomic_write_text, check_output

HF_WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"
_HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _own_storage(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with a storage of its own: safetensors refuses tensors that share memory,
    and ``torch.save`` would write the whole storage behind a view (a chunk of a fused q/k/v weight)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    seen: set[int] = set()
    for k, v in tensors.items():
        if not v.numel():
            continue
        storage = v.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != v.numel() * v.element_size():
            tensors[k] = v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
    return tensors


def save_file(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
              metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file. An existing regular file is replaced (commands that must not overwrite check
    with ``check_output`` first)."""
    path = check_output(path, overwrite=True, what="checkpoint")
    tensors = _own_storage(state_dict)
    with atomic_path(path, what="checkpoint") as tmp:
        try:
            st_save(tensors, str(tmp), metadata=metadata)
        except OSError as e:
            raise CheckpointError(f"could not write {path}: {e.strerror or e}") from None


def save_torch(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a ``.pt``/``.bin`` file as the official code and open_clip do (``torch.save`` of a plain dict of
    tensors, which ``torch.load(weights_only=True)`` reads back)."""
    path = check_output(path, overwrite=True, what="checkpoint")
    tensors = _own_storage(state_dict)
    with atomic_path(path, what="checkpoint") as tmp:
        try:
            torch.save(tensors, tmp)
        except OSError as e:
            raise CheckpointError(f"could not write {path}: {e.strerror or e}") from None


def check_hf_folder(folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check, before any work, that ``folder`` can receive a Hugging Face port export."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"OUT {folder} exists and is not a folder; a Hugging Face export is a folder "
                              "(config.json + model.safetensors): choose a folder path")
    stale = [n for n in _HF_INDEXES if (folder / n).exists()]
    if stale:  # the reader would follow the old index instead of the new weights
        raise CheckpointError(f"OUT {folder} holds a sharded model ({stale[0]}); choose an empty folder")
    for name in (HF_WEIGHTS, HF_CONFIG):
        check_output(folder / name, overwrite=overwrite, what="OUT")
    return folder


def save_hf_folder(state_dict: Mapping[str, torch.Tensor], cfg: CLIPConfig, folder: str | os.PathLike, *,
                   overwrite: bool = False) -> Path:
    """Write an evaclip (training-layout) state dict of the model ``cfg`` as a Hugging Face port folder: the
    port's tensors in ``model.safetensors``, then its ``config.json`` (what :mod:`evaclip.models.hf_port`
    reads back, and ``create_model(FOLDER, pretrained=FOLDER)`` builds from). A model the port cannot express
    is refused before anything is written."""
    folder = check_hf_folder(folder, overwrite=overwrite)
    config = config_to_hf(cfg)
    tensors = HF.from_evaclip(state_dict)
    save_file(tensors, folder / HF_WEIGHTS, metadata={"format": "pt"})
    atomic_write_text(folder / HF_CONFIG, json.dumps(config, indent=2) + "\n", what="OUT")
    return folder
