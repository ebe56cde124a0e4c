"""The load-test script's own pieces on small sizes: its synthetic index serves, its recall is measured right."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import search_serve  # noqa: E402
from evaclip.search import SearchIndex, store  # noqa: E402


def test_random_index_serves_and_recall_is_exact_when_every_list_is_probed(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "EXACT_MAX_BYTES", 100 * 64 * 4)   # IVF from 100 vectors of 64-d
    x, spec, _ = search_serve.make_random_index("evaclip-tiny", 1000, tmp_path / "idx")
    assert spec["type"] == "ivf" and x.shape == (1000, 64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    index = SearchIndex(tmp_path / "idx")                         # the recorded (saved) model is accepted
    assert index.count == 1000 and len(index.search_text("a query", k=10)) == 10
    rows = search_serve.recall_at_10(x, tmp_path / "idx", [1, spec["nlist"]], queries=20)
    full = [r for r in rows if r["nprobe"] == spec["nlist"]]
    assert [r["recall_at_10"] for r in full] == [1.0, 1.0]        # all lists probed = exact search
    one = [r["recall_at_10"] for r in rows if r["nprobe"] == 1]
    assert all(0 <= r < 1 for r in one)                           # one list of many misses neighbours
