"""Fuzz pass over the model loaders: seeded random mutations of a model JSON, a Hugging Face
``config.json``, a safetensors header and a ``.pt`` file. Every outcome is a loaded model or an EvaclipError
whose message is one line; never another exception, a hang, or an allocation that runs the machine out of
memory (sizes are checked against memory before anything is built). Loaded in-process for speed; a handful
of the refused files go through the real CLI for exit code 2."""
from __future__ import annotations

import copy
import json
import random
import struct
import warnings
from pathlib import Path

import pytest
import torch
from rel_kit import assert_clean_error, cli, run_many
from safetensors.torch import save_file

import evaclip
from evaclip.errors import EvaclipError

N = 200

# Values a hostile or careless file puts where a field was: wrong types, extremes, sizes no machine holds.
VALUES = [0, -1, 1, 3, 2**40, 2**62, 10**30, 1e-9, 0.5, 2.5, 1e308, -1e308, True, False, None, "4", "", "no",
          [], [1], {}, {"a": 1}, 16.0]


def _base_config() -> dict:
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                           "mlp_ratio": 2.0, "rope": True, "pt_hw_seq_len": 2, "naiveswiglu": True, "subln": True},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def _hf_config() -> dict:
    return {"projection_dim": 16,
            "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "intermediate_size": 64, "image_size": 16, "patch_size": 8, "use_rms_norm": True,
                              "post_layernorm": True, "q_bias": True, "v_bias": True, "hidden_act": "gelu",
                              "layer_norm_eps": 1e-6},
            "text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 128, "vocab_size": 64, "max_position_embeddings": 8,
                            "layer_norm_eps": 1e-5}}


def _mutate_tree(rng: random.Random, data: dict) -> dict:
    """One to three structural changes: a value replaced, a key deleted, renamed or added, a section replaced."""
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        # every field equally likely, so most changes hit the fields of a section rather than a whole section
        slots = [(data, k) for k in data] + [(v, k) for v in data.values() if isinstance(v, dict) for k in v]
        if not slots:
            return data
        target, key = rng.choice(slots)
        op = rng.random()
        if op < 0.1:
            target[rng.choice(["widht", "qkv", "layers_", "x"])] = rng.choice(VALUES)
        elif op < 0.75:
            target[key] = rng.choice(VALUES)
        elif op < 0.9:
            del target[key]
        else:
            target[key + rng.choice(["_", "s", ""])] = target.pop(key)
    return data


def _mutate_text(rng: random.Random, text: str) -> str:
    """Text-level damage: truncation, a flipped character, NaN/Infinity literals, a doubled or dropped brace."""
    op = rng.random()
    if op < 0.25:
        return text[: rng.randrange(len(text))]
    if op < 0.5:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice('{}[]",:0-9aeNI.e\x00é') + text[i + 1:]
    if op < 0.75:
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        i = rng.choice(digits)
        return text[:i] + rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "99999999999999", "-0"]) + text[i + 1:]
    return text.replace("{", "{{", 1) if rng.random() < 0.5 else text.replace("}", "", 1)


def _mutated_json(rng: random.Random, base: dict) -> str:
    return _mutate_text(rng, json.dumps(base)) if rng.random() < 0.3 else json.dumps(_mutate_tree(rng, base))


def _outcome(load) -> str:
    """'ok', or the one-line message of the EvaclipError; any other exception fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load()
    except EvaclipError as e:
        message = str(e)
        assert message and "\n" not in message and len(message) < 600, repr(message)
        return message
    return "ok"


def _check(outcomes: dict[str, str]) -> None:
    ok = sum(v == "ok" for v in outcomes.values())
    # both kinds of outcome occur: the mutations are neither all harmless nor all fatal
    assert 0 < ok < len(outcomes), f"{ok} of {len(outcomes)} loaded"


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def outcomes(fuzz_root) -> dict[str, dict[str, str]]:
    torch.manual_seed(0)
    results: dict[str, dict[str, str]] = {}

    rng, out = random.Random(1201), {}
    for i in range(N):
        path = fuzz_root / f"model_{i:03d}.json"
        path.write_text(_mutated_json(rng, _base_config()))
        out[str(path)] = _outcome(lambda: evaclip.create_model(str(path)))
    results["model_json"] = out

    rng, out = random.Random(1202), {}
    for i in range(N):
        folder = fuzz_root / f"hf_{i:03d}"
        folder.mkdir()
        (folder / "config.json").write_text(_mutated_json(rng, _hf_config()))
        out[str(folder)] = _outcome(lambda: evaclip.create_model(str(folder)))
    results["hf_config"] = out

    model = evaclip.create_model(_base_config())  # reused: a refused load changes nothing, a good one fits it
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(sd, fuzz_root / "base.safetensors")
    rng, out = random.Random(1203), {}
    for i in range(N):
        path = fuzz_root / f"st_{i:03d}.safetensors"
        path.write_bytes(_mutated_safetensors(rng, (fuzz_root / "base.safetensors").read_bytes()))
        out[str(path)] = _outcome(lambda: evaclip.load_checkpoint(model, path))
    results["safetensors"] = out

    torch.save(sd, fuzz_root / "base.pt")
    torch.save(sd, fuzz_root / "base_legacy.pt", _use_new_zipfile_serialization=False)
    rng, out = random.Random(1204), {}
    for i in range(N):
        path = fuzz_root / f"pt_{i:03d}.pt"
        base = fuzz_root / ("base.pt" if i % 2 else "base_legacy.pt")
        path.write_bytes(_mutated_bytes(rng, base.read_bytes()))
        out[str(path)] = _outcome(lambda: evaclip.load_checkpoint(model, path))
    results["pt"] = out
    return results


def _mutated_safetensors(rng: random.Random, data: bytes) -> bytes:
    """Damage the header: its JSON (entries' dtype, shape, offsets; metadata), its text, or its length."""
    n = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    op = rng.random()
    if op < 0.1:  # the length prefix lies
        return struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, len(data), 2**40, 2**64 - 1])) + data[8:]
    if op < 0.3:
        text = _mutate_text(rng, json.dumps(header))
    else:
        names = [k for k in header if k != "__metadata__"]
        for _ in range(rng.randint(1, 3)):
            entry = header.setdefault(rng.choice(names), {})
            field = rng.choice(["dtype", "shape", "data_offsets", None, "__metadata__"])
            if field == "dtype":
                entry["dtype"] = rng.choice(["F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "X", 3])
            elif field == "shape":
                shape = list(entry.get("shape", [1]))
                if shape and rng.random() < 0.7:
                    shape[rng.randrange(len(shape))] = rng.choice([0, 1, -1, 2**31, 2**62, 7, "2"])
                else:
                    shape = rng.choice([[], [1], [2**40, 2**40], None])
                entry["shape"] = shape
            elif field == "data_offsets":
                a, b = entry.get("data_offsets", [0, 4])
                entry["data_offsets"] = rng.choice([[b, a], [a, a], [a, b + 4], [a + 2, b], [0, 2**60], [a], None])
            elif field == "__metadata__":
                header["__metadata__"] = rng.choice([{"format": 1}, [], {"a": "b"}, None])
            else:
                header.pop(rng.choice(names), None)
        text = json.dumps(header)
    raw = text.encode("utf-8", "replace")
    return struct.pack("<Q", len(raw)) + raw + body


def _mutated_bytes(rng: random.Random, data: bytes) -> bytes:
    """Damage a torch.save file: flipped bytes, a cut, inserted or overwritten garbage."""
    data = bytearray(data)
    op = rng.random()
    if op < 0.4:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op < 0.6:
        data = data[: rng.randrange(len(data))]
    elif op < 0.8:
        i = rng.randrange(len(data))
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        i = rng.randrange(len(data))
        data[i:i + 64] = bytes(rng.randrange(256) for _ in range(64))
    return bytes(data)


@pytest.mark.parametrize("kind", ["model_json", "hf_config", "safetensors", "pt"])
def test_every_mutation_loads_or_fails_in_one_line(outcomes, kind):
    assert len(outcomes[kind]) == N
    _check(outcomes[kind])


def test_some_refused_files_through_the_real_cli(outcomes, fuzz_root):
    """A few refused files of each kind: `evaclip models` / `evaclip convert` exit 2 with the same one line.

    Only files refused for what they are (not for not fitting the model, or for the memory of a CPU build,
    which `convert` and `models` do not need) are expected to give the same message there."""
    cmds, expected = [], []
    for kind, command in (("model_json", "models"), ("hf_config", "models"), ("safetensors", "convert"),
                          ("pt", "convert")):
        refused = [(p, m) for p, m in outcomes[kind].items()
                   if m != "ok" and not any(w in m for w in ("GiB", "does not match", "fits", "non-float"))]
        for path, message in refused[:2]:
            args = ["models", path, "--no-flops"] if command == "models" else \
                ["convert", path, str(fuzz_root / f"out_{Path(path).stem}.safetensors")]
            cmds.append(cli(*args))
            expected.append((path, message))
    assert len(cmds) == 8
    for (path, message), proc in zip(expected, run_many(cmds)):
        assert message in assert_clean_error(proc), path
    assert not list(fuzz_root.glob("out_*"))
