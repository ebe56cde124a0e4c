"""The training loader on real shards, CSV files and caption folders: pairing, mixing, splitting, epochs."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from data_kit import config, image_bytes, keys_of, loader, make_shards, take, untokenize, write_tar

from evaclip.data import DataConfig, DataSource, parse_sources
from evaclip.errors import ConfigError, DatasetError


def _index_of(key: str, per_shard: int) -> int:
    shard, i = key[1:].split("_")
    return int(shard) * per_shard + int(i)


def test_batches_pair_each_image_with_its_caption(tmp_path):
    pattern, keys = make_shards(tmp_path, "a", 3, 5)
    batches = take(loader(config(pattern)), 6)
    for images, tokens, info in batches:
        assert images.shape == (4, 3, 8, 8) and tokens.shape == (4, 24)
        assert untokenize(tokens) == [f"caption {k}" for k in info["keys"]]
        for image, key in zip(images, info["keys"]):
            idx = _index_of(key, 5)
            # red - green is independent of the random offset the test transform adds
            expected = ((idx % 256) - (idx * 7) % 256) / 255.0
            assert abs(float(image[0, 0, 0] - image[1, 0, 0]) - expected) < 4 / 255
    assert set(keys_of(batches)) <= set(keys)


def test_sources_are_mixed_by_weight(tmp_path):
    a, _ = make_shards(tmp_path / "a", "a", 3, 10)
    b, _ = make_shards(tmp_path / "b", "b", 2, 10)
    cfg = config([DataSource(a, 1.6, "laion"), DataSource(b, 0.4, "coyo")], batch_size=50)
    batches = take(loader(cfg), 20)
    which = [s for _, _, info in batches for s in info["sources"]]
    share_a = which.count(0) / len(which)
    assert abs(share_a - 0.8) < 0.04, share_a  # 3 sigma for 1000 draws is 0.038
    keys = keys_of(batches)
    assert sum(k.startswith("a") for k in keys) == which.count(0)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("resampled", [True, False])
def test_more_workers_than_shards_does_not_hang(tmp_path, resampled):
    pattern, keys = make_shards(tmp_path, "a", 1, 7)
    seen = []
    for rank in range(2):
        ld = loader(config(pattern, num_workers=3, resampled=resampled, timeout_s=30.0), rank, 2)
        got = take(ld, 6)
        ld.close()
        assert len(got) == 6 and set(keys_of(got)) <= set(keys)
        assert all(images.shape[0] == 4 for images, _, _ in got)  # each batch joins the pieces of 3 workers
        seen.append(keys_of(got))
    assert seen[0] != seen[1]  # each rank reads its own streams


@pytest.mark.parametrize("ranks,workers", [(2, 0), (1, 2), (2, 2)])
def test_epochs_without_resampling_see_every_sample_once(tmp_path, ranks, workers):
    pattern, keys = make_shards(tmp_path, "a", 8, 6)  # 48 samples
    streams = ranks * max(workers, 1)
    per_rank = 48 // ranks // 4  # batches of 4 that make one epoch of this rank
    # 8 canonical streams, one shard each: every stream's share of an epoch is equal, so epochs are exact passes
    loaders = [loader(config(pattern, num_workers=workers, resampled=False, canonical_streams=8), r, ranks)
               for r in range(ranks)]
    for epoch in range(2):
        seen = Counter()
        for ld in loaders:
            seen.update(keys_of(take(ld, per_rank)))
        assert seen == Counter(keys), f"epoch {epoch} with {streams} streams"
    for ld in loaders:
        ld.close()


def test_virtual_epochs_continue_where_they_stopped(tmp_path):
    pattern, _ = make_shards(tmp_path, "a", 2, 9)
    ld = loader(config(pattern, samples_per_epoch=24))
    assert len(ld) == 6
    first, second = keys_of(list(ld)), keys_of(list(ld))
    assert len(first) == len(second) == 24
    assert first + second == keys_of(take(loader(config(pattern)), 12))


def _write_images(root, n):
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        p.write_bytes(image_bytes(i, "PNG" if i % 2 else "JPEG"))
        paths.append(p)
    return paths


def test_csv_source(tmp_path):
    paths = _write_images(tmp_path / "images", 10)
    csv = tmp_path / "pairs.csv"
    rows = ["path,caption"] + [f"images/{p.name},\"photo, number {i}\"" for i, p in enumerate(paths)]
    csv.write_text("\n".join(rows) + "\n")
    batches = take(loader(config(str(csv), resampled=False, batch_size=5, canonical_streams=1)), 4)
    for _, tokens, info in batches:
        for key, caption in zip(info["keys"], untokenize(tokens)):
            i = int(key[-6:-4])
            assert caption == f"photo, number {i}"[:24]
    first_epoch, second_epoch = keys_of(batches[:2]), keys_of(batches[2:])
    assert sorted(first_epoch) == sorted(second_epoch) == sorted(str(p) for p in paths)
    assert first_epoch != second_epoch  # reshuffled each epoch


def test_caption_folder_source_counts_images_without_caption(tmp_path):
    paths = _write_images(tmp_path / "folder" / "sub", 9)
    for i, p in enumerate(paths):
        if i != 4:
            p.with_suffix(".txt").write_text(f"folder caption {i}")
    ld = loader(config(str(tmp_path / "folder"), resampled=False, batch_size=4, canonical_streams=1))
    batches = take(ld, 2)
    assert sorted(keys_of(batches)) == sorted(str(p) for i, p in enumerate(paths) if i != 4)
    assert ld.skip_counts == {"missing_caption": 1}
    for _, tokens, info in batches:
        assert untokenize(tokens) == [f"folder caption {int(k[-6:-4])}"[:24] for k in info["keys"]]


def test_bad_configs_give_clear_errors(tmp_path):
    pattern, _ = make_shards(tmp_path, "a", 1, 2)
    with pytest.raises(ConfigError, match="no source"):
        loader(DataConfig())
    with pytest.raises(ConfigError, match="weight"):
        loader(config([DataSource(pattern, 0.0)]))
    with pytest.raises(ConfigError, match="batch_size"):
        loader(config(pattern, batch_size=0))
    with pytest.raises(ConfigError, match="rank"):
        loader(config(pattern), rank=2, world_size=2)
    with pytest.raises(DatasetError, match="none of its 3 shards"):
        loader(config(str(tmp_path / "missing-{0..2}.tar")))
    with pytest.raises(DatasetError, match="pipe"):
        loader(config(f"{pattern};pipe:curl -s http://x/y.tar"))
    with pytest.raises(DatasetError, match="caption column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        loader(config(str(bad)))
    with pytest.raises(ConfigError, match="weights"):
        parse_sources("a::b", "1")
    assert [(s.urls, s.weight) for s in parse_sources("x.tar::y{0..1}.tar", "1.6::0.4")] == [
        ("x.tar", 1.6), ("y{0..1}.tar", 0.4)]
    with pytest.raises(ConfigError, match="urls"):
        loader(DataConfig(sources=[{"url": pattern}]))


def test_sources_from_strings_and_dicts(tmp_path):
    a, _ = make_shards(tmp_path / "a", "a", 1, 4)
    b, _ = make_shards(tmp_path / "b", "b", 1, 4)
    for spec in (f"{a}::{b}", [a, {"urls": b, "weight": 1.0, "name": "bee"}]):
        ld = loader(config(spec, batch_size=8, resampled=False))
        assert [s.urls for s in ld.dataset.cfg.sources] == [a, b]
        assert {k[0] for k in keys_of(take(ld, 2))} == {"a", "b"}


def test_all_shards_broken_raises_instead_of_spinning(tmp_path):
    for i in range(2):
        write_tar(tmp_path / f"e-{i}.tar", [])
    with pytest.raises(DatasetError, match="no sample"):
        take(loader(config(str(tmp_path / "e-{0..1}.tar"))), 1)


def test_default_tokenizer_is_the_library_one(tmp_path):
    import evaclip.tokenizer as tok
    from data_kit import to_rgb, transform

    from evaclip.data import make_loader

    pattern, _ = make_shards(tmp_path, "a", 1, 4)
    cfg = config(pattern, context_length=77)
    images, tokens, info = next(iter(make_loader(cfg, transform=transform, to_rgb=to_rgb)))
    expected = tok.tokenize([f"caption {k}" for k in info["keys"]], context_length=77)
    assert np.array_equal(tokens.numpy(), expected.numpy())


def test_fsspec_shards_feed_the_loader(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    _, keys = make_shards(tmp_path, "m", 2, 4)
    for s in range(2):
        with fsspec.open(f"memory://evaclip-test-{tmp_path.name}/m-{s:03d}.tar", "wb") as f:
            f.write((tmp_path / f"m-{s:03d}.tar").read_bytes())
    url = f"memory://evaclip-test-{tmp_path.name}/m-{{000..001}}.tar"
    got = keys_of(take(loader(config(url, resampled=False, canonical_streams=2)), 2))
    assert sorted(got) == sorted(keys)


def test_a_transform_that_always_fails_stops_with_a_clear_error(tmp_path, monkeypatch):
    from data_kit import to_rgb, tokenizer

    from evaclip.data import make_loader, pipeline

    monkeypatch.setattr(pipeline, "MAX_SKIP_RUN", 30)
    pattern, _ = make_shards(tmp_path, "a", 2, 5)

    def broken(image):
        raise RuntimeError("bad crop size")

    ld = make_loader(config(pattern), transform=broken, tokenizer=tokenizer, to_rgb=to_rgb)
    with pytest.raises(DatasetError, match="30 samples in a row.*transform_error: bad crop size"):
        take(ld, 1)


def _reduce_worker(rank: int, world_size: int, init: str, out: str) -> None:
    import json

    import torch.distributed as dist

    from evaclip.data.pipeline import global_skip_counts

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    counts = {"corrupt_image": rank + 1, "truncated_tar": 2} if rank else {"corrupt_image": 1, "empty_caption": 5}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(global_skip_counts(counts), f)
    dist.destroy_process_group()


def test_skip_counts_are_summed_over_ranks(tmp_path):
    import json

    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_reduce_worker, args=(2, init, str(tmp_path / "out")), nprocs=2, start_method="fork")
    want = {"corrupt_image": 3, "empty_caption": 5, "truncated_tar": 2}
    for rank in range(2):
        assert json.loads((tmp_path / f"out.{rank}").read_text()) == want
