"""`evaclip index` and `evaclip serve` as real processes: end to end over 127.0.0.1, and one-line errors."""
from __future__ import annotations

import json
import socket

import httpx
from search_kit import (QUERIES, assert_clean_error, assert_same_ranking, brute_force, image_files,
                        make_images, run_cli)


def test_index_then_serve_answers_exact_top10_over_http(tiny, built, server):
    tmp, photos = built
    paths = image_files(photos)
    sims = brute_force(*tiny, photos, paths, QUERIES)
    assert server.url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/api/health").json()["count"] == 20
        for qi, query in enumerate(QUERIES):
            response = client.get("/api/search", params={"q": query, "k": 10})
            assert response.status_code == 200
            assert_same_ranking(response.json()["results"], paths, sims[qi], 10)
        first = client.get("/api/search", params={"q": QUERIES[0]}).json()["results"][0]
        assert client.get(first["url"]).content == (photos / first["path"]).read_bytes()
        bad = client.get("/api/search", params={"q": ""})
        assert bad.status_code == 400 and "error" in bad.json()


def _busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_cli_mistakes_are_one_line_errors(tiny, other_tiny, built, tmp_path):
    tmp, photos = built
    config, weights = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "afile").write_text("x")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    manifest = json.loads((tmp / "idx" / "index.json").read_text())
    (incomplete / "index.json").write_text(json.dumps({**manifest, "complete": False}))
    busy = _busy_port()
    model = ["--model", config, "--pretrained", weights]
    cases = [
        (["index", str(empty), *model, "--out", str(tmp_path / "o1")], ["has no"]),
        (["index", str(tmp_path / "missing"), *model, "--out", str(tmp_path / "o2")], ["does not exist"]),
        (["index", str(photos), *model, "--out", str(tmp_path / "afile")], ["not a folder"]),
        (["index", str(photos), *model, "--out", str(stray)], ["not an index"]),
        (["index", str(photos), "--out", str(tmp_path / "o3")], ["--model is required"]),
        (["index", str(photos), *model, "--out", str(tmp_path / "o4"), "--batch-size", "0"], [">= 1"]),
        (["index", str(photos), "--model", "no-such-model", "--out", str(tmp_path / "o5")], ["unknown model"]),
        (["index", str(photos), "--model", config, "--pretrained", other_tiny[1], "--out", str(tmp / "idx")],
         ["embeds differently"]),
        (["index", str(photos / "sub"), "--out", str(tmp / "idx")], ["was built from"]),
        (["serve", str(tmp_path / "missing")], ["does not exist"]),
        (["serve", str(stray)], ["not a search index"]),
        (["serve", str(incomplete)], ["incomplete"]),
        (["serve", str(tmp / "idx"), "--pretrained", other_tiny[1]], ["embeds differently"]),
        (["serve", str(tmp / "idx"), "--pretrained", str(tmp_path / "gone.safetensors")], ["does not exist"]),
        (["serve", str(tmp / "idx"), "--port", str(busy.getsockname()[1])], ["cannot listen", "--port"]),
        (["serve", str(tmp / "idx"), "--port", "70000"], ["--port"]),
        (["serve", str(tmp / "idx"), "--host", "no.such.host.invalid"], ["--host"]),
    ]
    try:
        for args, fragments in cases:  # in this process: the CLI's own code path, without 17 torch imports
            assert_clean_error(_main(args), *fragments)
        # and as a real process: exit code 2 and one line, after loading and checking the model
        assert_clean_error(run_cli(*cases[12][0], timeout=180), *cases[12][1])
    finally:
        busy.close()
    # none of the failed runs touched the index
    assert json.loads((tmp / "idx" / "index.json").read_text()) == manifest


def _main(args):
    """Run evaclip's CLI entry in this process; a CompletedProcess-like result."""
    import contextlib
    import io
    import subprocess

    from evaclip.cli.main import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


def test_torchrun_ranks_split_the_source_and_merge_into_one_index(tiny, tmp_path):
    import sys

    import numpy as np
    from proc_kit import run_bounded
    from search_kit import env

    from evaclip.search import SearchIndex, build_index, store
    photos = make_images(tmp_path / "photos", 24)
    config, weights = tiny
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "evaclip.cli.main", "index", str(photos), "--model", config, "--pretrained", weights,
           "--out", str(tmp_path / "idx"), "--part-size", "5", "--device", "cpu", "--workers", "1"]
    proc = run_bounded(cmd, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "embedded 24 new images" in proc.stdout
    ranks = {p.name.split("_")[1] for p in store.list_parts(tmp_path / "idx")}
    assert ranks == {"000", "001"}
    build_index(str(photos), tmp_path / "one", model=config, pretrained=weights, progress=False, device="cpu")
    a, b = SearchIndex(tmp_path / "idx"), SearchIndex(tmp_path / "one")
    assert sorted(a.meta["image_path"]) == sorted(b.meta["image_path"]) == image_files(photos)
    for query in QUERIES[:4]:
        ra, rb = a.search_text(query, k=10), b.search_text(query, k=10)
        assert [r["path"] for r in ra] == [r["path"] for r in rb]
        np.testing.assert_allclose([r["score"] for r in ra], [r["score"] for r in rb], atol=1e-5)
