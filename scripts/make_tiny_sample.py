"""Build the small image-text sample shipped in ``evaclip/data/sample/`` (used by the ``tiny`` recipe and tests).

Run once after ``evaclip data prepare``; the output is committed. Train: 512 Twemoji pairs (CC-BY 4.0).
Validation: 128 held-out pairs whose images are the Noto Emoji renderings (Apache-2.0) of emoji that were
trained in the Twemoji style, so retrieval on them measures transfer to an unseen art style.

    python scripts/make_tiny_sample.py [--data data_cache/offline]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image

SIZE = 32
OUT = Path(__file__).resolve().parent.parent / "evaclip" / "data" / "sample"


def png(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data_cache/offline")
    root = Path(ap.parse_args().data)
    twemoji: dict[str, tuple[bytes, str]] = {}
    for shard in sorted((root / "train").glob("twemoji-*.tar")):
        with tarfile.open(shard) as t:
            members = {m.name: m for m in t.getmembers()}
            for name in members:
                if name.endswith(".json"):
                    key = name[:-5]
                    meta = json.loads(t.extractfile(members[name]).read())
                    twemoji[meta["id"]] = (t.extractfile(members[key + ".png"]).read(),
                                           t.extractfile(members[key + ".txt"]).read().decode())
    noto_dir = root / "retrieval" / "noto_names"
    noto = {}
    with open(noto_dir / "captions.csv") as f:
        for row in csv.DictReader(f):
            noto.setdefault(Path(row["image"]).stem, noto_dir / row["image"])
    shared = sorted(set(twemoji) & set(noto))
    rng = random.Random(0)
    rng.shuffle(shared)
    val_ids = sorted(shared[:128])
    rest = sorted(set(twemoji) - set(val_ids))
    rng.shuffle(rest)
    train_ids = sorted(val_ids + rest[: 512 - len(val_ids)])
    OUT.mkdir(parents=True, exist_ok=True)
    with tarfile.open(OUT / "tiny-train-000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, eid in enumerate(train_ids):
            image, caption = twemoji[eid]
            add(tar, f"{i:06d}.png", png(image))
            add(tar, f"{i:06d}.txt", caption.encode())
    with tarfile.open(OUT / "tiny-val-000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, eid in enumerate(val_ids):
            add(tar, f"{i:06d}.png", png(noto[eid].read_bytes()))
            add(tar, f"{i:06d}.txt", twemoji[eid][1].encode())
    print(f"train {len(train_ids)} pairs, val {len(val_ids)} pairs -> {OUT}")


if __name__ == "__main__":
    main()
