"""Exact resume: K batches, save, new loader from the state, M more == the first K+M of an uninterrupted run."""
from __future__ import annotations

import json

import pytest
import torch
from data_kit import config, keys_of, loader, make_shards, take, write_tar

from evaclip.data import DataSource
from evaclip.errors import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def _resume_matches(cfg, rank, world_size, k, m):
    reference = take(loader(cfg, rank, world_size), k + m)
    first = loader(cfg, rank, world_size)
    head = take(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # it must survive a JSON checkpoint
    first.close()
    second = loader(cfg, rank, world_size)
    second.load_state_dict(state)
    tail = take(second, m)
    second.close()
    got = head + tail
    assert keys_of(got) == keys_of(reference)
    for (img, tok, info), (ref_img, ref_tok, ref_info) in zip(got, reference):
        assert torch.equal(tok, ref_tok)
        assert torch.equal(img, ref_img)  # the random augmentation is restored too
        assert info["skips"] == ref_info["skips"]
    return second, reference


@pytest.fixture
def two_sources(tmp_path):
    a, _ = make_shards(tmp_path / "a", "a", 3, 7)
    b, _ = make_shards(tmp_path / "b", "b", 2, 5)
    return [DataSource(a, 3.0, "a"), DataSource(b, 1.0, "b")]


@pytest.mark.parametrize("resampled", [True, False])
@pytest.mark.parametrize("workers,k", [(0, 3), (2, 3), (2, 4)])
def test_resume_is_exact_single_rank(two_sources, resampled, workers, k):
    cfg = config(two_sources, num_workers=workers, resampled=resampled)
    _resume_matches(cfg, 0, 1, k, 5)


@pytest.mark.parametrize("resampled", [True, False])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_on_each_of_two_ranks(two_sources, workers, resampled):
    cfg = config(two_sources, num_workers=workers, resampled=resampled)
    streams = []
    for rank in range(2):
        _, reference = _resume_matches(cfg, rank, 2, 5, 4)
        streams.append(keys_of(reference))
    assert streams[0] != streams[1]


def test_resume_csv_source(tmp_path):
    from data_kit import image_bytes

    (tmp_path / "im").mkdir()
    rows = ["image,caption"]
    for i in range(11):
        (tmp_path / "im" / f"{i}.png").write_bytes(image_bytes(i))
        rows.append(f"im/{i}.png,picture {i}")
    (tmp_path / "c.csv").write_text("\n".join(rows))
    _resume_matches(config(str(tmp_path / "c.csv"), resampled=False, num_workers=2), 0, 1, 3, 4)


def test_resume_inside_a_truncated_shard_keeps_skip_counts(tmp_path):
    pattern, _ = make_shards(tmp_path, "a", 2, 9)
    raw = (tmp_path / "a-001.tar").read_bytes()
    (tmp_path / "a-001.tar").write_bytes(raw[: len(raw) // 3])
    cfg = config(pattern, resampled=False, canonical_streams=2)  # one stream per shard: the damage is met early
    second, reference = _resume_matches(cfg, 0, 1, 2, 6)
    expected = {}
    for _, _, info in reference:
        for reason, n in info["skips"].items():
            expected[reason] = expected.get(reason, 0) + n
    assert expected.get("truncated_tar", 0) >= 1
    assert dict(second.skip_counts) == expected


def test_loader_leaves_the_global_rng_alone(two_sources):
    torch.manual_seed(123)
    want = torch.rand(3)
    for workers in (0, 2):
        torch.manual_seed(123)
        ld = loader(config(two_sources, num_workers=workers))
        take(ld, 3)
        ld.close()
        assert torch.equal(torch.rand(3), want)


def test_state_from_another_order_is_refused(two_sources, tmp_path):
    ld = loader(config(two_sources, num_workers=0, global_batch_size=4))
    take(ld, 2)
    state = ld.state_dict()
    # Another world size or number of workers serves the same global order: accepted.
    loader(config(two_sources, num_workers=0, global_batch_size=4), 1, 2).load_state_dict(state)
    loader(config(two_sources, num_workers=2, global_batch_size=4)).load_state_dict(state)
    # Another global batch or stream count is another order.
    with pytest.raises(DatasetError, match="global_batch"):
        loader(config(two_sources, num_workers=0), 0, 2).load_state_dict(state)
    with pytest.raises(DatasetError, match="canonical_streams"):
        loader(config(two_sources, global_batch_size=4, canonical_streams=8)).load_state_dict(state)
    with pytest.raises(DatasetError, match="version"):
        loader(config(two_sources)).load_state_dict({"step": 3})
    write_tar(tmp_path / "extra.tar", [])
    with pytest.raises(DatasetError, match="sources"):
        loader(config(two_sources[:1])).load_state_dict(state)


def _textured_shard(path, n):
    """A shard of noise PNGs, so that different crops of one image differ."""
    import io

    import numpy as np
    from PIL import Image

    members = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
        members += [(f"t{i:03d}.png", buf.getvalue()), (f"t{i:03d}.txt", f"noise picture {i}".encode())]
    return str(write_tar(path, members))


@pytest.mark.parametrize("transform_seed", [None, 5])
def test_resume_with_the_library_transform_and_tokenizer(tmp_path, transform_seed):
    from evaclip.data import make_loader
    from evaclip.transforms import image_transform

    cfg = config(_textured_shard(tmp_path / "t.tar", 10), num_workers=0, context_length=77)

    def make():
        return make_loader(cfg, transform=image_transform(16, is_train=True, scale=(0.3, 1.0), seed=transform_seed))

    reference = take(make(), 6)
    first = make()
    head = take(first, 2)
    second = make()
    second.load_state_dict(first.state_dict())
    got = head + take(second, 4)
    assert reference[0][0].shape == (4, 3, 16, 16) and reference[0][1].shape == (4, 77)
    for (img, tok, info), (ref_img, ref_tok, ref_info) in zip(got, reference):
        assert info["keys"] == ref_info["keys"]
        assert torch.equal(tok, ref_tok) and torch.equal(img, ref_img)
    # the crops really are random: one image gets different crops in different batches of a longer run
    crops = {}
    for img, _, info in take(make(), 30):
        for x, key in zip(img, info["keys"]):
            crops.setdefault(key, []).append(x)
    repeated = [v for v in crops.values() if len(v) > 1]
    assert repeated and any(not torch.equal(v[0], v[1]) for v in repeated)
