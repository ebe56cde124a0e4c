"""Load test of `evaclip serve` on 127.0.0.1, recall of the approximate index, and index build throughput.

1. Build throughput: `evaclip index`'s build (decode + preprocess in threads, batched forward, parts, FAISS)
   against `evaclip embed`'s image loop on the same rendered images, same model and batch size, images/s.
2. Serving: indexes of 10k and 1M vectors. The vectors are RANDOM UNIT VECTORS (the width of --model), not
   image embeddings: a 1M-image collection cannot be embedded on a CPU in a benchmark run. The model is real
   (random weights), so each query pays the real text-tower forward. `evaclip serve` runs as its own process on
   127.0.0.1 with a free port; 1, 8 and 32 client threads send distinct text queries (no cache hits), each
   level bounded by --requests and --max-seconds. Reported: queries/s, p50 and p99 latency.
3. Recall@10 of the approximate (IVF) index at 1M against exact inner-product search over the same vectors,
   for random queries (the worst case: no structure for IVF to exploit) and for near-duplicate queries
   (a database vector plus noise, like searching for a photo in the collection), at several nprobe values.

    .venv/bin/python benchmarks/search_serve.py [--model evaclip-small] [--sizes 10000,1000000]
        [--clients 1,8,32] [--requests 300] [--max-seconds 30] [--build-images 256]

Only 127.0.0.1 is contacted. Client threads and the server share the machine's cores, as they would on a
laptop; on 2 cores the client side takes a noticeable share at 32 clients.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = ("red blue green yellow purple orange black white small large round square cat dog bird car tree "
         "house flower star heart face hand sun moon cloud boat fish apple book clock key").split()


def render_images(folder: Path, n: int, size: int) -> Path:
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (size + i % 17, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = rng.integers(0, size // 2, 2)
            d.ellipse((int(x0), int(y0), int(x0) + size // 3, int(y0) + size // 4),
                      fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        im.save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


def build_throughput(model: str, n: int, batch: int, tmp: Path, rounds: int = 2) -> dict:
    """images/s of `evaclip index`'s build and of `evaclip embed`'s loop, same images, model and batch.

    Both run in this process after a warm-up, alternating for `rounds` rounds; the best round of each is kept
    (on a shared machine the slower rounds measure the other processes)."""
    import torch

    import evaclip
    from evaclip.cli.embed import embed_images, find_images
    from evaclip.search import build_index
    size = evaclip.get_model_config(model).vision_cfg.image_size
    folder = render_images(tmp / "images", n, max(size, 64))
    m, _, preprocess = evaclip.create_model_and_transforms(model)
    m.eval()
    paths = find_images(folder)
    with torch.no_grad():
        embed_images(m, preprocess, paths[:batch], batch, True, "cpu")  # warm-up: kernels, allocator
    index_rates, embed_rates = [], []
    for r in range(rounds):
        report = build_index(str(folder), tmp / f"build_idx{r}", model=model, progress=False, device="cpu",
                             batch_size=batch)
        index_rates.append(report.images_per_s)
        start = time.perf_counter()
        with torch.no_grad():
            embed_images(m, preprocess, paths, batch, True, "cpu")
        embed_rates.append(n / (time.perf_counter() - start))
    return {"images": n, "batch": batch, "index_images_per_s": max(index_rates),
            "embed_images_per_s": max(embed_rates)}


def make_random_index(model: str, n: int, out: Path, seed: int = 0) -> tuple[np.ndarray, dict, float]:
    """An index folder of n random unit vectors with the model's record; returns the vectors, spec, build s."""
    from evaclip.search import store
    from evaclip.search.build import finalize
    from evaclip.search.encoder import Encoder
    import torch
    from safetensors.torch import save_file

    import evaclip
    torch.manual_seed(seed)  # random weights, saved: the server must rebuild the same model to accept the index
    weights = out.parent / f"{out.name}_weights.safetensors"
    save_file({k: v.contiguous() for k, v in evaclip.create_model(model).state_dict().items()}, str(weights))
    encoder = Encoder(model, str(weights))
    dim = encoder.dim
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store.write_manifest(out, {"complete": False, "model": encoder.record(),
                               "source": {"kind": "synthetic", "spec": f"random-{n}", "root": str(out)},
                               "count": 0, "index": {}, "parts": []})
    part = 250_000
    for p, i in enumerate(range(0, n, part)):
        rows = x[i:i + part]
        names = [f"random/{j:07d}.jpg" for j in range(i, i + len(rows))]
        store.write_part(out, f"00001_000_{p:05d}", rows, {
            "image_path": names, "caption": [None] * len(rows), "width": [0] * len(rows),
            "height": [0] * len(rows), "source_id": names, "stamp": ["0"] * len(rows),
            "shard": [None] * len(rows), "key": [None] * len(rows)})
    start = time.perf_counter()
    count, _, spec = finalize(out)
    build_s = time.perf_counter() - start
    manifest = store.read_manifest(out)
    store.write_manifest(out, {**{k: v for k, v in manifest.items() if k not in ("format", "version")},
                               "complete": True, "count": count, "index": spec,
                               "parts": [p.name for p in store.list_parts(out)]})
    return x, spec, build_s


def start_server(index_dir: Path, extra: list[str]):
    import re
    import select
    import subprocess
    proc = subprocess.Popen([sys.executable, "-m", "evaclip.cli.main", "serve", str(index_dir), "--host",
                             "127.0.0.1", "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        line = proc.stdout.readline() if ready else ""
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return proc, f"http://127.0.0.1:{match.group(1)}"
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"evaclip serve did not start: {proc.stderr.read()[-2000:]}")


def load_level(url: str, clients: int, requests: int, max_seconds: float, offset: int) -> dict:
    """`clients` threads share `requests` distinct text queries; stops at `max_seconds` whatever is left."""
    import httpx
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def worker():
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                j = offset + i
                q = f"{WORDS[j % len(WORDS)]} {WORDS[(j // len(WORDS)) % len(WORDS)]} number {j}"
                t = time.perf_counter()
                r = client.get("/api/search", params={"q": q, "k": 10})
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code == 200 and len(r.json()["results"]) == 10:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    pick = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3) if lat else (lambda p: float("nan"))
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "qps": len(lat) / wall,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99), "mean_ms": statistics.fmean(lat) * 1e3 if lat else None}


def recall_at_10(x: np.ndarray, index_dir: Path, nprobes: list[int], queries: int = 200) -> list[dict]:
    import faiss

    from evaclip.search import store
    ivf = store.read_faiss(index_dir)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    rng = np.random.default_rng(1)
    rand = rng.standard_normal((queries, x.shape[1]), dtype=np.float32)
    sources = rng.choice(len(x), queries, replace=False)
    near = x[sources] + 0.1 / np.sqrt(x.shape[1]) * rng.standard_normal((queries, x.shape[1]), dtype=np.float32)
    out = []
    for name, q in (("random", rand), ("near-duplicate", near)):
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        _, truth = flat.search(q, 10)
        for nprobe in nprobes:
            ivf.nprobe = nprobe
            start = time.perf_counter()
            for i in range(queries):  # one query at a time, as the server searches
                ivf.search(q[i:i + 1], 10)
            ms = (time.perf_counter() - start) / queries * 1e3
            _, got = ivf.search(q, 10)
            recall = float(np.mean([len(set(got[i]) & set(truth[i])) / 10 for i in range(queries)]))
            row = {"queries": name, "nprobe": nprobe, "recall_at_10": recall, "ms_per_query": ms}
            if name == "near-duplicate":  # the one meaningful neighbour of random data: the perturbed vector
                row["source_at_1"] = float(np.mean(got[:, 0] == sources))
            out.append(row)
    start = time.perf_counter()
    for i in range(20):
        flat.search(rand[i:i + 1], 10)
    out.append({"queries": "random", "nprobe": "exact", "recall_at_10": 1.0,
                "ms_per_query": (time.perf_counter() - start) / 20 * 1e3})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="evaclip-small")
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=300, help="queries per concurrency level (a bound)")
    parser.add_argument("--max-seconds", type=float, default=30, help="time bound per concurrency level")
    parser.add_argument("--build-images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    levels = [int(c) for c in args.clients.split(",")]
    results = {"model": args.model, "machine": f"{platform.processor() or platform.machine()}, "
                                               f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.build_images:
            results["build"] = build_throughput(args.model, args.build_images, args.batch, tmp)
            b = results["build"]
            print(f"build ({b['images']} images, batch {b['batch']}): evaclip index {b['index_images_per_s']:.1f} "
                  f"images/s, evaclip embed {b['embed_images_per_s']:.1f} images/s", flush=True)
        results["serve"] = []
        for n in sizes:
            index_dir = tmp / f"random_{n}"
            x, spec, build_s = make_random_index(args.model, n, index_dir)
            print(f"{n:,} random unit vectors ({x.shape[1]}-d): {spec} built in {build_s:.1f} s", flush=True)
            proc, url = start_server(index_dir, [])
            try:
                offset = 0
                for clients in levels:
                    row = load_level(url, clients, args.requests, args.max_seconds, offset)
                    offset += args.requests
                    row.update(vectors=n, index=spec["type"])
                    results["serve"].append(row)
                    print(f"  {clients:>2} clients: {row['qps']:.1f} queries/s, p50 {row['p50_ms']:.1f} ms, "
                          f"p99 {row['p99_ms']:.1f} ms ({row['requests']} queries, {row['errors']} errors)",
                          flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            if spec["type"] == "ivf":
                nlist = spec["nlist"]
                probes = sorted({max(1, nlist // 64), spec["nprobe"], max(1, nlist // 4)})
                results["recall"] = recall_at_10(x, index_dir, probes)
                for r in results["recall"]:
                    found = f", source at rank 1: {r['source_at_1']:.3f}" if "source_at_1" in r else ""
                    print(f"  recall@10 ({r['queries']} queries, nprobe {r['nprobe']}): {r['recall_at_10']:.3f}"
                          f"{found}, {r['ms_per_query']:.2f} ms/query", flush=True)
            del x
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
