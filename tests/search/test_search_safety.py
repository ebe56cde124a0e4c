"""Hostile requests and mismatched inputs: 4xx JSON errors, no path traversal, no symlink escape, limits."""
from __future__ import annotations

import asyncio
import io
import os

import httpx
import numpy as np
import pytest
from PIL import Image
from search_kit import draw, make_images
from starlette.testclient import TestClient

from evaclip.search import SearchIndex, build_index, create_app
from evaclip.search.encoder import ModelMismatchError


def _build(source, out, model, **kw):
    config, weights = model
    return build_index(str(source), out, model=config, pretrained=weights, progress=False, device="cpu",
                       workers=2, **kw)


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    _build(make_images(tmp / "photos", 24), tmp / "idx", tiny)
    index = SearchIndex(tmp / "idx")
    return index, TestClient(create_app(index, max_upload_bytes=200_000, max_upload_pixels=1_000_000),
                             raise_server_exceptions=False)


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    draw(1, size).save(buf, "PNG")
    return buf.getvalue()


def _assert_json_error(response, status):
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("path", [
    "/images/../../../../etc/passwd", "/images/..%2F..%2F..%2Fetc%2Fpasswd", "/images/%2e%2e/%2e%2e/etc/passwd",
    "/images/-1", "/images/1e3", "/images/0x1", "/images/99999", "/thumbs/99999", "/images/etc/passwd",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/images/%00",
])
def test_image_routes_serve_only_indexed_files(served, path):
    _, client = served
    response = client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert b"root:" not in response.content


def test_a_symlink_out_of_the_root_is_never_indexed_nor_served(tiny, images, tmp_path):
    secret = tmp_path / "secret.png"
    draw(9).save(secret)
    os.symlink(secret, images / "link.png")                       # points outside the collection
    os.symlink(images / "img001.png", images / "inside.png")     # points inside: fine
    report = _build(images, tmp_path / "idx", tiny)
    assert report.skipped == {"outside_root": 1}
    index = SearchIndex(tmp_path / "idx")
    paths = index.meta["image_path"]
    assert "link.png" not in paths and "inside.png" in paths
    client = TestClient(create_app(index))
    # a file swapped for a symlink out of the root after indexing is refused at request time
    victim = paths.index("img002.png")
    (images / "img002.png").unlink()
    os.symlink(secret, images / "img002.png")
    assert client.get(f"/images/{victim}").status_code == 404
    assert client.get(f"/thumbs/{victim}").status_code == 404
    assert client.get(f"/images/{paths.index('inside.png')}").status_code == 200


@pytest.mark.parametrize("request_kw,status", [
    ({"params": {}}, 400),
    ({"params": {"q": "  "}}, 400),
    ({"params": {"q": "x" * 1001}}, 400),
    ({"params": {"q": "cat", "k": "0"}}, 400),
    ({"params": {"q": "cat", "k": "101"}}, 400),
    ({"params": {"q": "cat", "k": "ten"}}, 400),
    ({"params": {"q": "cat", "k": "1e9"}}, 400),
])
def test_bad_text_queries_get_400_json(served, request_kw, status):
    _, client = served
    _assert_json_error(client.get("/api/search", **request_kw), status)


def test_uploads_over_the_limits_or_not_images_are_refused(served):
    _, client = served
    ok = client.post("/api/search", files={"image": ("a.png", _png(), "image/png")})
    assert ok.status_code == 200 and ok.json()["results"]
    # more bytes than the limit: refused from Content-Length, before the body is read
    _assert_json_error(client.post("/api/search", files={"image": ("a.png", b"\0" * 300_000, "image/png")}), 413)

    # ... and from the stream itself when the client sends no length (chunked)
    def chunks():
        for _ in range(30):
            yield b"\0" * 10_000
    _assert_json_error(client.post("/api/search", content=chunks(), headers={"content-type": "image/png"}), 413)
    # more pixels than the limit: refused from the header, before decoding
    buf = io.BytesIO()
    Image.new("L", (1200, 1000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 200_000
    response = client.post("/api/search", files={"image": ("big.png", buf.getvalue(), "image/png")})
    _assert_json_error(response, 413)
    assert "1200x1000" in response.json()["error"]
    for name, data, ctype in [("t.txt", b"hello, not an image", "text/plain"), ("e.png", b"", "image/png"),
                              ("t.png", _png()[:60], "image/png"), ("x.svg", b"<svg/>", "image/svg+xml")]:
        _assert_json_error(client.post("/api/search", files={"image": (name, data, ctype)}), 415)
    _assert_json_error(client.post("/api/search", files={"other": ("a.png", _png(), "image/png")}), 400)
    _assert_json_error(client.post("/api/search", files={"image": (None, "not a file")}), 400)
    _assert_json_error(client.post("/api/search", content=b'{"image": 1}',
                                   headers={"content-type": "application/json"}), 415)
    _assert_json_error(client.post("/api/search", content=b"--xx\r\ngarbage",
                                   headers={"content-type": "multipart/form-data; boundary=xx"}), 400)
    _assert_json_error(client.post("/api/search", content=b"--xx\r\n",
                                   headers={"content-type": "multipart/form-data"}), 400)
    _assert_json_error(client.post("/api/search", content=_png(), headers={"content-type": "image/png",
                                                                          "content-length": "abc"}), 400)


def test_classify_validates_labels(served):
    _, client = served
    image = {"image": ("a.png", _png(), "image/png")}
    for labels in ["", "only one", ",,,", "\n".join(f"l{i}" for i in range(101)), "x" * 201 + ",y"]:
        _assert_json_error(client.post("/api/classify", files=image, data={"labels": labels}), 400)
    _assert_json_error(client.post("/api/classify", content=_png(), headers={"content-type": "image/png"}), 400)
    ok = client.post("/api/classify", files=image, data={"labels": ["cat", "dog"]})
    assert ok.status_code == 200 and [r["label"] for r in ok.json()["results"]] in (["cat", "dog"], ["dog", "cat"])


def test_unknown_routes_and_methods_get_json_errors(served):
    _, client = served
    _assert_json_error(client.get("/api/nope"), 404)
    _assert_json_error(client.delete("/api/search"), 405)
    _assert_json_error(client.get("/api/classify"), 405)
    page = client.get("/")
    assert page.status_code == 200 and "search-form" in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_concurrent_text_queries_are_batched_and_cached(served):
    index, _ = served
    app = create_app(index)
    queries = [f"query number {i}" for i in range(16)]

    async def fire():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            before = (await client.get("/api/health")).json()
            responses = await asyncio.gather(*(client.get("/api/search", params={"q": q, "k": 5}) for q in queries))
            health = (await client.get("/api/health")).json()
            repeat = await client.get("/api/search", params={"q": queries[0], "k": 5})
            health2 = (await client.get("/api/health")).json()
        return before, responses, health, repeat, health2

    before, responses, health, repeat, health2 = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    assert health["text_batched_items"] - before["text_batched_items"] == 16
    assert health["text_batches"] - before["text_batches"] <= 8   # 1 here: all 16 arrive before the first runs
    assert health2["text_batches"] == health["text_batches"]
    assert health2["text_cache_hits"] - health["text_cache_hits"] == 1
    for q, r in zip(queries, responses):  # batching changes nothing in the answers
        alone = index.search_vector(index.encoder.encode_texts([q])[0], 5)
        assert [x["id"] for x in r.json()["results"]] == [x["id"] for x in alone]
        np.testing.assert_allclose([x["score"] for x in r.json()["results"]], [x["score"] for x in alone],
                                   atol=1e-5)
    assert repeat.json() == responses[0].json()


def test_an_empty_index_answers_with_no_results(tiny, images, tmp_path):
    _build(images, tmp_path / "idx", tiny)
    for p in list(images.rglob("*.*")):
        p.unlink()
    (images / "notes.png").write_bytes(b"not really")  # the folder still lists a file, which fails to decode
    report = build_index(str(images), tmp_path / "idx", progress=False, device="cpu")
    assert report.total == 0 and report.removed == 24
    client = TestClient(create_app(SearchIndex(tmp_path / "idx")))
    assert client.get("/api/search", params={"q": "anything"}).json()["results"] == []
    assert client.post("/api/search", files={"image": ("a.png", _png(), "image/png")}).json()["results"] == []
    assert client.get("/api/health").json()["count"] == 0
    assert client.get("/images/0").status_code == 404


def test_a_different_model_is_refused_for_an_existing_index(tiny, other_tiny, images, tmp_path):
    _build(images, tmp_path / "idx", tiny)
    with pytest.raises(ModelMismatchError, match="embeds differently"):
        SearchIndex(tmp_path / "idx", pretrained=other_tiny[1])
    with pytest.raises(ModelMismatchError, match="embeds differently"):
        _build(images, tmp_path / "idx", other_tiny)
    # the recorded checkpoint replaced in place by other weights: caught too
    os.replace(other_tiny[1], tiny[1] + ".other")
    saved = tiny[1] + ".saved"
    os.replace(tiny[1], saved)
    os.replace(tiny[1] + ".other", tiny[1])
    try:
        with pytest.raises(ModelMismatchError):
            SearchIndex(tmp_path / "idx")
    finally:
        os.replace(tiny[1], other_tiny[1])
        os.replace(saved, tiny[1])
    assert SearchIndex(tmp_path / "idx").count == 24
