"""Reading checkpoint files safely: whatever the bytes are, a mapping of tensors or one line saying what is wrong.

Files are read with ``safetensors`` or ``torch.load(weights_only=True)``; a pickle that needs anything but
tensors and plain containers is refused, because unpickling it could run arbitrary code. A Hugging Face model
folder (one weights file, or shards listed by ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``)
is read as one checkpoint. :func:`read_state_dict` is the one way a checkpoint becomes a state dict: it also
unwraps trainer/DeepSpeed files and refuses non-finite weights.
"""
from __future__ import annotations

import io
import os
import pickletools
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import safe_open

from evaclip.errors import CheckpointError
from evaclip.models.config import parse_json
from evaclip.models.hf_port import check_config

StateDict = dict[str, torch.Tensor]

_WRAPPER_KEYS = ("model", "module", "state_dict")
_RETRY = "re-download or re-export it"
# What a finished training run exports into its out_dir (evaclip.train.tasks): the weights and their model config.
RUN_WEIGHTS, RUN_MODEL_CONFIG = "final.safetensors", "model_config.json"


def read_file(path: str | os.PathLike) -> Mapping:
    """Read a checkpoint file safely; return whatever mapping it holds (not yet unwrapped).

    Whatever the bytes are, the result is a mapping or a one-line :class:`CheckpointError` that says what the
    file is (missing, empty, text, truncated, corrupt, a pickle that would run code) and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_folder(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise CheckpointError(f"checkpoint {path} is not a regular file; pass a weights file")
        if st.st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the file was not written completely")
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({e.strerror or e})") from None
    if _is_safetensors(path, head):
        return _read_safetensors(path)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head.startswith(b"PK\x03\x04"):  # a zip whose end (the central directory) is missing
        raise CheckpointError(f"checkpoint {path} is a truncated PyTorch archive (the end of the zip is missing); "
                              f"{_RETRY}")
    # torch.save writes a zip archive, or (legacy) a stream of pickles of protocol >= 2, whose first byte is
    # PROTO (0x80). Anything else is not a PyTorch file; say what it looks like instead of unpickling it.
    if not is_zip and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a checkpoint: {_looks_like(head)}; pass a .safetensors, .pt or .bin "
                              "weights file")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols; the error below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:  # any failure to parse untrusted bytes means a bad file: one line
        raise _torch_load_error(path, is_zip, e) from None


def _looks_like(head: bytes) -> str:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = " ".join(text.split())[:40]
        return f"it is a text file (it starts with {first!r})"
    return f"its format is unknown (first bytes {head[:8].hex(' ')})"


# Modules whose globals a PyTorch weights pickle names; any other import is what makes a pickle unsafe.
_WEIGHTS_MODULES = ("torch", "collections", "_codecs", "numpy")


def _pickle_globals(data: bytes, max_pickles: int = 6) -> tuple[list[str], str | None]:
    """The globals (``module.name``) that the pickle(s) at the start of ``data`` import, and why the scan stopped
    early if it did ("truncated" or "corrupt"). Opcodes are only read (pickletools), never executed."""
    stream, found = io.BytesIO(data), []
    for _ in range(max_pickles):  # the legacy format is several pickles in a row, then raw tensor bytes
        if stream.tell() >= len(data) or data[stream.tell():stream.tell() + 1] != b"\x80":
            return found, None
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except ValueError as e:  # "pickle exhausted before seeing STOP", "not enough data in stream to read uint8"
            return found, "truncated" if any(w in str(e) for w in ("exhausted", "remain", "not enough")) else "corrupt"
        except Exception:  # the scanner failing on garbage says the same
            return found, "corrupt"
    return found, None


def _torch_load_error(path: Path, is_zip: bool, error: Exception) -> CheckpointError:
    """Say why ``torch.load(weights_only=True)`` refused ``path``: unsafe imports, or a damaged/foreign file."""
    boilerplate = ("Weights only load failed", "In PyTorch 2.6", "Please file an issue", "Check the documentation",
                   "Re-running")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    reason = (lines[0] if lines else type(error).__name__)[:160]
    try:
        if is_zip:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                data = z.read(names[0]) if names else b""
        else:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
    except Exception:  # an archive too damaged to list
        data = b""
    found, stopped = _pickle_globals(data)
    unsafe = [g for g in found if g.split(".", 1)[0] not in _WEIGHTS_MODULES]
    if unsafe:
        return CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors (it imports {unsafe[0]}), and "
            "unpickling it could run code. If you trust the file, convert it to safetensors in an isolated "
            "environment")
    if stopped == "truncated" or isinstance(error, EOFError) or "unexpected EOF" in reason:
        return CheckpointError(f"checkpoint {path} is truncated (it ends early); {_RETRY}")
    if is_zip:
        return CheckpointError(f"checkpoint {path} is a damaged PyTorch archive ({reason}); {_RETRY}")
    return CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({reason}); {_RETRY}")


def _read_safetensors(path: Path, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (only ``names``, if given; each must be in the file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            wanted = sorted(keys) if names is None else list(names)
            absent = [k for k in wanted if k not in keys]
            if absent:
                raise CheckpointError(f"{path} lacks {len(absent)} tensor(s) its index assigns to it (e.g. "
                                      f"{absent[0]}); re-download the model folder")
            return {k: f.get_tensor(k) for k in wanted}
    except CheckpointError:
        raise
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # a malformed header can make the Rust reader panic (a BaseException)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({reason}); it may be truncated "
                              f"or corrupt: {_RETRY}") from None


# A Hugging Face model folder: one weights file, or shards listed by an index (weight name -> shard file).
_HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_HF_SINGLE = ("model.safetensors", "pytorch_model.bin")


def _read_folder(path: Path) -> Mapping:
    """Read a Hugging Face model folder: its single weights file, or the tensors of its shards.

    The index's ``weight_map`` decides which tensors the model has and where each one is: a tensor is taken
    only from the shard the index names for it. A tensor that a shard holds but the index does not assign to
    that shard (a duplicate of one held elsewhere, a stale leftover) is ignored, as the index is the list of
    the model's weights; a tensor the index names but its shard lacks is an error.
    """
    for name in _HF_INDEXES:
        index_path = path / name
        if not index_path.is_file():
            continue
        try:
            text = index_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read the shard index {index_path} ({e}); re-download the model folder"
                                  ) from None
        index = parse_json(text, f"shard index {index_path}", CheckpointError)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map \
                or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index_path} is not a valid shard index (its weight_map must map tensor "
                                  "names to shard file names); re-download the model folder")
        outside = [v for v in weight_map.values() if Path(v).name != v or v in ("", ".", "..")]
        if outside:  # shards live in the folder itself; never follow a path out of it
            raise CheckpointError(f"{index_path} names a shard outside its folder ({outside[0]!r}); refusing it")
        check_config(path)
        by_shard: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(tensor)
        merged: dict[str, torch.Tensor] = {}
        for shard, tensors in sorted(by_shard.items()):
            shard_path = path / shard
            if not shard_path.is_file():
                raise CheckpointError(f"{index_path.name} names the shard {shard}, which is missing from {path}; "
                                      "the download is incomplete")
            merged.update(_read_shard(shard_path, tensors))
        return merged
    for name in _HF_SINGLE:
        if (path / name).is_file():
            check_config(path)
            return read_file(path / name)
    if (path / RUN_WEIGHTS).is_file():  # a finished training run: the weights it exported
        return read_file(path / RUN_WEIGHTS)
    raise CheckpointError(f"{path} is a directory without a weights file; pass a checkpoint file (.safetensors, "
                          f".pt or .bin), a Hugging Face model folder ({', '.join(_HF_INDEXES + _HF_SINGLE)}) or "
                          f"a finished training run (its {RUN_WEIGHTS}); to continue an unfinished run, train "
                          "with resume=PATH")


def _read_shard(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of one shard, read by name (safetensors) or picked from the loaded file (.bin)."""
    if path.stat().st_size and _is_safetensors(path):
        return _read_safetensors(path, names)
    raw = read_file(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"shard {path} holds {type(raw).__name__}, not a dict of tensors; re-download it")
    absent = [k for k in names if not isinstance(raw.get(k), torch.Tensor)]
    if absent:
        raise CheckpointError(f"{len(absent)} tensors listed for {path.name} in the index are not in it (e.g. "
                              f"{absent[0]}); re-download the model folder")
    return {k: raw[k] for k in names}


def _is_safetensors(path: Path, head: bytes | None = None) -> bool:
    if path.suffix == ".safetensors":
        return True
    # A safetensors file starts with an 8-byte little-endian header length followed by '{'.
    if head is None:
        with open(path, "rb") as f:
            head = f.read(9)
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def unwrap(obj: Mapping) -> StateDict:
    """Find the state dict inside training-checkpoint wrappers and strip DeepSpeed's ``module.`` prefixes."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must hold a dict of tensors, found {type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("the checkpoint holds no tensors (expected a state dict, possibly under "
                              f"{'/'.join(_WRAPPER_KEYS)})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def check_finite(sd: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse a state dict with NaN or infinite values in any floating-point tensor, naming the first one.

    Broken weights would otherwise load without a word and show up much later, as NaN losses (blamed on the
    learning rate) or as metrics computed from NaN scores.
    """
    bad_tensors, bad_values, first = 0, 0, None
    for key, value in sd.items():
        if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
            continue
        flat, n = value.reshape(-1), 0
        step = 1 << 24  # bounded temporaries, even for a multi-GB memory-mapped tensor
        for i in range(0, flat.numel(), step):
            chunk = flat[i:i + step]
            if chunk.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64) \
                    and not chunk.is_complex():
                chunk = chunk.float()  # float8 types have no isfinite kernel
            n += int((~torch.isfinite(chunk)).sum())
        if n:
            bad_tensors, bad_values = bad_tensors + 1, bad_values + n
            first = first or (key, n, value.numel())
    if first:
        key, n, total = first
        raise CheckpointError(
            f"{name} has non-finite weights: {bad_values:,} NaN/inf values in {bad_tensors} tensor(s), first "
            f"{key} ({n:,} of {total:,}); use an earlier or re-downloaded checkpoint (to load it anyway: "
            "allow_nonfinite=True in Python, --allow-nonfinite for evaclip convert/embed/eval)")


def read_state_dict(source: str | os.PathLike | Mapping, *, allow_nonfinite: bool = False
                    ) -> tuple[StateDict, str]:
    """The one way a checkpoint becomes a state dict (every loader goes through here): read a file or folder,
    or take a mapping already in memory; unwrap it; refuse non-finite weights unless ``allow_nonfinite``.
    Returns the state dict (keys as in the file) and a name for messages."""
    if isinstance(source, Mapping):
        sd, name = unwrap(source), "<state dict>"
    else:
        sd, name = unwrap(read_file(source)), str(source)
    if not allow_nonfinite:
        check_finite(sd, name)
    return sd, name


