"""The validation split that chose the demo teacher's recipe (scripts/demo_recipe_search.py): whole caption
groups go to one side, one image per held-out caption is a validation pair, and the split is reproducible."""
from __future__ import annotations

import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import demo_recipe_search as search  # noqa: E402


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _shards(root: Path) -> dict[str, str]:
    """Two shards; captions repeat across 'styles' (as the emoji sets do), with different letter case."""
    root.mkdir(parents=True)
    captions = {}
    for shard in range(2):
        with tarfile.open(root / f"src-{shard:05d}.tar", "w") as tar:
            for i in range(30):
                key = f"s{shard}_{i:03d}"
                caption = f"Thing {i % 20}" if shard == 0 else f"thing {i % 20}"
                captions[key] = caption
                for ext, data in (("png", _png(i)), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return captions


def _train_keys(split: Path) -> list[str]:
    keys = []
    for tar in sorted((split / "train").glob("*.tar")):
        with tarfile.open(tar) as t:
            keys += [m.name.split(".")[0] for m in t.getmembers() if m.name.endswith(".txt")]
    return keys


def test_caption_groups_never_straddle_the_split(tmp_path):
    captions = _shards(tmp_path / "train")
    info = search.make_split(tmp_path / "train", tmp_path / "split", val_fraction=0.25, seed=3)
    with open(tmp_path / "split" / "val" / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_groups = [r["caption"].lower() for r in rows]
    train_keys = _train_keys(tmp_path / "split")
    assert info["held_captions"] == 5 and len(rows) == 5 == len(set(val_groups))  # 25% of 20 groups, 1 image each
    assert not {captions[k].lower() for k in train_keys} & set(val_groups)
    # every image of a held-out group left training; every other image stayed
    assert len(train_keys) == len(set(train_keys)) == sum(c.lower() not in val_groups for c in captions.values())
    for r in rows:
        assert (tmp_path / "split" / "val" / r["image"]).is_file()


def test_the_split_is_reproducible_and_cached(tmp_path):
    _shards(tmp_path / "train")
    a = search.make_split(tmp_path / "train", tmp_path / "a", val_fraction=0.25, seed=3)
    b = search.make_split(tmp_path / "train", tmp_path / "b", val_fraction=0.25, seed=3)
    c = search.make_split(tmp_path / "train", tmp_path / "c", val_fraction=0.25, seed=4)
    assert a == b and a["val_digest"] != c["val_digest"]
    assert (tmp_path / "a" / "val" / "captions.csv").read_text() == (tmp_path / "b" / "val" / "captions.csv").read_text()
    (tmp_path / "a" / "val" / "captions.csv").unlink()  # a finished split is not rebuilt
    assert search.make_split(tmp_path / "train", tmp_path / "a", val_fraction=0.25, seed=3) == a
    with pytest.raises(SystemExit, match="another --out"):  # nor silently reused with other settings
        search.make_split(tmp_path / "train", tmp_path / "a", val_fraction=0.5, seed=3)


def _fluent_shard(root: Path) -> None:
    """Fluent Emoji samples in two styles whose captions repeat the other sources' (plus one of their own)."""
    with tarfile.open(root / "fluent-00000.tar", "w") as tar:
        for i in range(22):
            style = "flat" if i % 2 else "high-contrast"
            key, caption = f"f_{i:03d}", f"thing {i % 21}"  # "thing 20" exists only here
            meta = json.dumps({"source": "fluent", "id": f"{style}/{i:04X}"}).encode()
            for ext, data in (("png", _png(100 + i)), ("txt", caption.encode()), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_fluent_candidates_are_judged_on_the_same_validation_pairs(tmp_path):
    _shards(tmp_path / "train")
    base = search.make_split(tmp_path / "train", tmp_path / "base", val_fraction=0.25, seed=3)
    _fluent_shard(tmp_path / "train")
    none = search.make_split(tmp_path / "train", tmp_path / "none", val_fraction=0.25, seed=3)
    flat = search.make_split(tmp_path / "train", tmp_path / "flat", val_fraction=0.25, seed=3,
                             fluent_styles=("flat",))
    val = (tmp_path / "base" / "val" / "captions.csv").read_text()
    assert (tmp_path / "none" / "val" / "captions.csv").read_text() == val == \
        (tmp_path / "flat" / "val" / "captions.csv").read_text()
    assert base["val_digest"] == none["val_digest"] == flat["val_digest"]
    assert sorted(_train_keys(tmp_path / "none")) == sorted(_train_keys(tmp_path / "base"))  # no Fluent sample
    held = {line.split(",", 1)[1].lower() for line in val.splitlines()[1:]}
    fluent = [k for k in _train_keys(tmp_path / "flat") if k.startswith("f_")]
    # only flat samples (odd i), and none whose caption is held out
    assert fluent and all(int(k[2:]) % 2 == 1 and f"thing {int(k[2:]) % 21}" not in held for k in fluent)
    assert len(fluent) == sum(1 for i in range(1, 22, 2) if f"thing {i % 21}" not in held)
    with pytest.raises(SystemExit, match="another --out"):
        search.make_split(tmp_path / "train", tmp_path / "flat", val_fraction=0.25, seed=3)
