"""`evaclip index` + search: exact answers, incremental and resumed builds, CSV and webdataset sources."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from search_kit import (QUERIES, assert_same_ranking, brute_force, draw, image_files, make_images)
from starlette.testclient import TestClient

from evaclip.search import SearchIndex, build_index, create_app
from evaclip.search import store


def _build(source, out, tiny, **kw):
    config, weights = tiny
    kw.setdefault("model", config)
    return build_index(str(source), out, pretrained=weights, progress=False, device="cpu", workers=2, **kw)


def _vectors(index_dir) -> dict[str, np.ndarray]:
    """path -> stored embedding, over all parts of an index."""
    out = {}
    for part in store.list_parts(index_dir):
        emb, table, _ = store.read_part(part)
        out.update(zip(table.column("image_path").to_pylist(), np.asarray(emb)))
    return out


def test_api_top10_equals_brute_force_cosine_search(tiny, images, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = _build(images, tmp_path / "idx", tiny)
    assert report.embedded == 24 and report.total == 24 and report.skipped == {"corrupt_image": 1}
    paths = image_files(images)
    paths.remove("broken.png")
    sims = brute_force(*tiny, images, paths, QUERIES)
    client = TestClient(create_app(SearchIndex(tmp_path / "idx")))
    for qi, query in enumerate(QUERIES):
        response = client.get("/api/search", params={"q": query, "k": 10})
        assert response.status_code == 200
        assert_same_ranking(response.json()["results"], paths, sims[qi], 10)
    # k larger than the collection: every image once, best first
    results = client.get("/api/search", params={"q": QUERIES[0], "k": 100}).json()["results"]
    assert_same_ranking(results, paths, sims[0], 100)


def test_search_by_image_finds_the_image_itself_first(tiny, images, tmp_path):
    _build(images, tmp_path / "idx", tiny)
    client = TestClient(create_app(SearchIndex(tmp_path / "idx")))
    data = (images / "img005.png").read_bytes()
    results = client.post("/api/search", files={"image": ("q.png", data, "image/png")}, data={"k": "3"}).json()
    assert results["results"][0]["path"] == "img005.png"
    assert results["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    raw = client.post("/api/search?k=1", content=data, headers={"content-type": "image/png"}).json()
    assert raw["results"][0]["path"] == "img005.png"
    # the image behind the url is the indexed file, byte for byte
    served = client.get(raw["results"][0]["url"])
    assert served.content == data and served.headers["content-type"] == "image/png"
    thumb = client.get(raw["results"][0]["thumbnail"])
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"


def test_classify_uses_the_paper_templates_and_matches_the_public_api(tiny, images, tmp_path):
    import torch

    import evaclip
    from evaclip.eval.catalog import default_templates
    from evaclip.eval.zeroshot import build_zeroshot_classifier
    _build(images, tmp_path / "idx", tiny)
    client = TestClient(create_app(SearchIndex(tmp_path / "idx")))
    labels = ["a red thing", "a blue thing", "a dog"]
    data = (images / "img002.png").read_bytes()
    body = client.post("/api/classify", files={"image": ("q.png", data, "image/png")},
                       data={"labels": "\n".join(labels)}).json()
    assert body["templates"] == 80
    got = {r["label"]: r["probability"] for r in body["results"]}
    config, weights = tiny
    model, _, preprocess = evaclip.create_model_and_transforms(config, pretrained=weights)
    from PIL import Image
    with torch.no_grad():
        head = build_zeroshot_classifier(model.eval(), evaclip.get_tokenizer(config), labels,
                                         default_templates("imagenet1k"))
        feats = model.encode_image(preprocess(Image.open(images / "img002.png"))[None], normalize=True)
        want = (100 * feats @ head.T).softmax(-1)[0].tolist()
    assert [got[label] for label in labels] == pytest.approx(want, abs=1e-4)
    probs = [r["probability"] for r in body["results"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_incremental_reindex_embeds_only_new_and_changed_files(tiny, images, tmp_path):
    out = tmp_path / "idx"
    assert _build(images, out, tiny).embedded == 24
    make_images(images, 5, start=100)                      # 5 new files
    (images / "img001.png").unlink()                       # 2 removed
    (images / "sub" / "img003.png").unlink()
    draw(77).save(images / "img002.png")                   # 1 changed in place
    os.utime(images / "img002.png", ns=(1, 1))             # a different stamp even on a coarse clock
    embedded = []
    report = _build(images, out, tiny, model=None, on_part=lambda name, n: embedded.append(n))
    assert report.embedded == 6 and sum(embedded) == 6     # only new + changed were embedded
    assert report.removed == 3                             # 2 removed + the old version of the changed one
    assert report.total == 24 + 5 - 2
    # the result is the index a fresh build gives
    fresh = _build(images, tmp_path / "fresh", tiny)
    assert fresh.total == report.total
    a, b = _vectors(out), _vectors(tmp_path / "fresh")
    assert a.keys() == b.keys() == set(image_files(images))
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-6)
    # nothing new: nothing embedded
    again = _build(images, out, tiny)
    assert again.embedded == 0 and again.removed == 0 and again.total == report.total
    index = SearchIndex(out)
    assert index.count == report.total and index.search_text("red", k=5)


def test_interrupted_build_resumes_where_it_stopped(tiny, images, tmp_path):
    out = tmp_path / "idx"

    def crash_after_first_part(name, n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(images, out, tiny, part_size=8, batch_size=4, on_part=crash_after_first_part)
    assert json.loads((out / "index.json").read_text())["complete"] is False
    with pytest.raises(store.IndexFormatError, match="incomplete"):
        SearchIndex(out)
    # a half-written part (embeddings without metadata) is what a kill leaves: it must be discarded
    (out / "img_emb" / "img_emb_99999_000_00000.npy").write_bytes(b"partial")
    report = _build(images, out, tiny, part_size=8, batch_size=4)
    assert report.embedded == 24 - 8 and report.total == 24
    assert not (out / "img_emb" / "img_emb_99999_000_00000.npy").exists()
    fresh = _build(images, tmp_path / "fresh", tiny)
    a, b = _vectors(out), _vectors(tmp_path / "fresh")
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-6)
    assert fresh.total == SearchIndex(out).count


def test_csv_source_keeps_captions_and_confines_paths_to_the_root(tiny, images, tmp_path):
    outside = tmp_path / "elsewhere.png"
    draw(3).save(outside)
    csv = images / "captions.csv"
    csv.write_text("path,caption\nimg001.png,a first caption\nsub/img000.jpg,zero\nimg001.png,a first caption\n"
                   f"../elsewhere.png,outside\n{outside},outside absolute\nmissing.png,gone\n")
    report = _build(csv, tmp_path / "idx", tiny)
    assert report.total == 2
    assert report.skipped == {"duplicate_row": 1, "outside_root": 2, "missing_image": 1}
    index = SearchIndex(tmp_path / "idx")
    got = {r["path"]: r["caption"] for r in index.search_text("x", k=10)}
    assert got == {"img001.png": "a first caption", "sub/img000.jpg": "zero"}


def _shard(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _png(i):
    buf = io.BytesIO()
    draw(i).save(buf, "PNG")
    return buf.getvalue()


def test_webdataset_shards_index_and_serve_members(tiny, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "s-000.tar", [(f"{i:04d}", {"png": _png(i), "txt": f"caption {i}".encode()}) for i in range(5)])
    _shard(shards / "s-001.tar", [("0005", {"png": _png(5), "json": b'{"caption": "five"}'}),
                                  ("0006", {"png": b"broken", "txt": b"bad"}), ("0007", {"txt": b"no image"})])
    report = _build(str(shards / "s-{000..002}.tar"), tmp_path / "idx", tiny)
    assert report.total == 6
    assert report.skipped == {"missing_shard": 1, "corrupt_image": 1, "missing_image": 1}
    client = TestClient(create_app(SearchIndex(tmp_path / "idx")))
    data = _png(5)
    top = client.post("/api/search", files={"image": ("q.png", data, "image/png")}).json()["results"][0]
    assert top["path"] == "s-001.tar/0005" and top["caption"] == "five"
    assert client.get(top["url"]).content == data
    # re-run: completed shards are not read again, a grown shard is
    assert _build(str(shards / "s-{000..002}.tar"), tmp_path / "idx", tiny).embedded == 0
    _shard(shards / "s-002.tar", [("0008", {"png": _png(8)})])
    again = _build(str(shards / "s-{000..002}.tar"), tmp_path / "idx", tiny)
    assert again.embedded == 1 and again.total == 7


def test_large_collections_get_an_approximate_index(tiny, images, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "EXACT_MAX_BYTES", 10 * 64 * 4)  # 10 vectors of 64-d
    report = _build(images, tmp_path / "idx", tiny)
    assert report.index["type"] == "ivf"
    index = SearchIndex(tmp_path / "idx", nprobe=10_000)        # every list probed: exact answers again
    paths = image_files(images)
    sims = brute_force(*tiny, images, paths, QUERIES[:3])
    for qi, query in enumerate(QUERIES[:3]):
        assert_same_ranking(index.search_text(query, k=10), paths, sims[qi], 10)
