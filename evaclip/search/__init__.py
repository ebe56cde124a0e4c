"""Semantic image search over a collection: `evaclip index` builds an index, `evaclip serve` serves it.

    from evaclip.search import build_index, SearchIndex, create_app
    build_index("photos/", "idx", model="EVA02-CLIP-B-16", pretrained="EVA02_CLIP_B_psz16_s8B.pt")
    index = SearchIndex("idx")                 # rebuilds the recorded model and checks it reproduces the index
    index.search_text("a dog on a beach", k=10)
    app = create_app(index)                    # ASGI: uvicorn.run(app, host="127.0.0.1")

The index folder layout is described in :mod:`evaclip.search.store`. Needs the ``search`` extra
(faiss-cpu, pyarrow, starlette, uvicorn, python-multipart).
"""
from __future__ import annotations

__all__ = ["build_index", "BuildReport", "SearchIndex", "create_app"]


def __getattr__(name):
    # Lazy: the CLI imports this package for its help text without paying for torch, faiss and starlette.
    if name in ("build_index", "BuildReport"):
        from evaclip.search import build
        return getattr(build, name)
    if name == "SearchIndex":
        from evaclip.search.service import SearchIndex
        return SearchIndex
    if name == "create_app":
        from evaclip.search.app import create_app
        return create_app
    raise AttributeError(f"module 'evaclip.search' has no attribute {name!r}")
