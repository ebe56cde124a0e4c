"""The global sample order (evaclip/data/order.py): the same samples, augmented the same way, fill each step on any
world size and number of workers, and a data position saved on one world size resumes on another."""
from __future__ import annotations

import tarfile

import pytest
import torch
from data_kit import config, loader, make_shards, write_tar

from evaclip.data import DataSource
from evaclip.data.order import GlobalOrder
from evaclip.data.pipeline import merge_states
from evaclip.data.tario import TarSampleReader
from evaclip.errors import ConfigError


def _layouts():
    return [(1, 1), (1, 3), (2, 1), (2, 2), (4, 3), (8, 1)]


@pytest.mark.parametrize("world,workers", _layouts())
def test_pieces_partition_the_global_batch_and_streams_stay_on_one_worker(world, workers):
    streams, batch = 24, 16
    owner: dict[int, tuple[int, int]] = {}
    for step in range(5):
        filled = []
        for rank in range(world):
            order = GlobalOrder(streams, batch, world, rank, GlobalOrder.usable_workers(streams, world, workers))
            pieces = [order.piece(step, w) for w in range(order.workers)]
            assert sorted(p for piece in pieces for p in piece) == list(order.rank_positions(step))
            for w, piece in enumerate(pieces):
                for p in piece:
                    assert owner.setdefault(p % streams, (rank, w)) == (rank, w)  # a stream never moves
            filled += [p for piece in pieces for p in piece]
        assert sorted(filled) == list(range(step * batch, (step + 1) * batch))


def _run(pattern, world, workers, steps, **kw):
    """The global batches of `steps` steps: per step (keys, images) in global-position order."""
    loaders = [loader(config(pattern, num_workers=workers, global_batch_size=8, canonical_streams=8, **kw), r, world)
               for r in range(world)]
    out = []
    its = [iter(ld) for ld in loaders]
    for _ in range(steps):
        parts = [next(it) for it in its]
        pos = [p for _, _, info in parts for p in info["positions"]]
        keys = [k for _, _, info in parts for k in info["keys"]]
        images = torch.cat([im for im, _, _ in parts])
        order = sorted(range(len(pos)), key=pos.__getitem__)
        assert [pos[i] for i in order] == list(range(len(out) * 8, len(out) * 8 + 8))
        out.append(([keys[i] for i in order], images[torch.tensor(order)]))
    return out, loaders


@pytest.mark.parametrize("world,workers", [(2, 0), (4, 0), (1, 2), (2, 2)])
def test_every_world_size_and_worker_count_reads_the_same_batches(tmp_path, world, workers):
    pattern, _ = make_shards(tmp_path, "a", 3, 7)
    reference, _ = _run(pattern, 1, 0, 4)
    got, loaders = _run(pattern, world, workers, 4)
    for ld in loaders:
        ld.close()
    for (keys_a, img_a), (keys_b, img_b) in zip(reference, got):
        assert keys_a == keys_b
        assert torch.equal(img_a, img_b)  # the same crop of each sample: augmentation is keyed by the sample
    assert len({k for keys, _ in reference for k in keys}) > 8  # not one sample over and over


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 4)])
def test_a_position_saved_on_one_world_size_resumes_on_another(tmp_path, before, after):
    pattern, _ = make_shards(tmp_path, "a", 3, 7)
    reference, _ = _run(pattern, 1, 0, 5)
    _, first = _run(pattern, before, 0, 2)
    state = merge_states([ld.state_dict() for ld in first])
    cfg = config(pattern, num_workers=0, global_batch_size=8, canonical_streams=8)
    second = [loader(cfg, r, after) for r in range(after)]
    for ld in second:
        ld.load_state_dict(state)
    its = [iter(ld) for ld in second]
    for step in range(2, 5):
        parts = [next(it) for it in its]
        keys = dict(zip([p for _, _, i in parts for p in i["positions"]], [k for _, _, i in parts for k in i["keys"]]))
        assert [keys[p] for p in sorted(keys)] == reference[step][0]


def test_a_broken_sample_is_replaced_from_its_own_stream(tmp_path):
    """A skip refills the slot from the same stream: no other position moves."""
    pattern, _ = make_shards(tmp_path, "a", 2, 6)
    clean, _ = _run(pattern, 1, 0, 3, resampled=False)
    # Break one sample that the clean run used: its slot gets its stream's next sample, the others stay.
    victim = clean[0][0][3]
    shard = tmp_path / f"a-{victim[1:4]}.tar"
    with tarfile.open(shard) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    members = [(n, b"not an image" if n.startswith(victim) and not n.endswith(".txt") else data)
               for n, data in members]
    write_tar(shard, members)
    broken, loaders = _run(pattern, 2, 0, 3, resampled=False)
    flat_clean = [k for keys, _ in clean for k in keys]
    flat_broken = [k for keys, _ in broken for k in keys]
    assert victim not in flat_broken
    hit = {p % 8 for p, k in enumerate(flat_clean) if k == victim}  # the streams that drew the victim
    for stream in range(8):
        a, b = flat_clean[stream::8], flat_broken[stream::8]
        if stream not in hit:
            assert a == b, stream  # a stream that never met the broken sample is untouched
        else:
            first = a.index(victim)
            assert a[:first] == b[:first]
            assert b[first:first + len(a) - first - 1] == a[first + 1:len(a)]  # the stream's next samples move up
    assert sum(ld.skip_counts.get("corrupt_image", 0) for ld in loaders) == len(hit)


def test_world_sizes_that_cannot_share_the_order_are_refused_naming_those_that_can(tmp_path):
    pattern, _ = make_shards(tmp_path, "a", 1, 4)
    with pytest.raises(ConfigError, match=r"run on 1, 2, 4 processes"):
        loader(config(pattern, global_batch_size=8, canonical_streams=12), 0, 3)
    with pytest.raises(ConfigError, match="global_batch_size"):
        config([DataSource(pattern)], global_batch_size=0).validate()


def test_strided_reading_matches_a_naive_split(tmp_path):
    pattern, keys = make_shards(tmp_path, "a", 1, 11)
    url = pattern.replace("{000..000}", "000")
    every = [s["__key__"] for s in TarSampleReader(url)]
    assert every == keys
    for stride in (1, 2, 3, 5, 20):
        for part in range(stride):
            for skip in (0, 1, 2):
                got = [s["__key__"] for s in TarSampleReader(url, skip=part + skip * stride, stride=stride)]
                assert got == keys[part::stride][skip:], (stride, part, skip)
