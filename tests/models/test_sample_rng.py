"""Per-sample randomness and name-keyed initialisation (evaclip/models/sample_rng.py, init.py): against a numpy
reference hash, and invariant to how a batch is split or a model is built."""
from __future__ import annotations

import numpy as np
import torch

from evaclip.models import create_model, get_model_config, sample_rng
from evaclip.models.init import keyed_by_name
from evaclip.models.layers import DropPath, patch_dropout
from evaclip.models.masking import BlockMaskGenerator

M64 = np.uint64((1 << 64) - 1)


def _splitmix_np(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & M64
        return x ^ (x >> np.uint64(31))


def test_the_torch_hash_is_splitmix64():
    values = np.array([0, 1, 2, 12345, (1 << 62) + 7, (1 << 63) - 1], dtype=np.uint64)
    want = _splitmix_np(values).astype(np.int64)
    got = sample_rng.mix(torch.from_numpy(values.astype(np.int64))).numpy()
    assert (got == want).all()


def test_uniforms_are_uniform_and_depend_only_on_each_sample_key():
    keys = sample_rng.sample_keys(0, torch.arange(4096))
    with sample_rng.per_sample(keys):
        u = sample_rng.uniform(4096, 1, 8, torch.device("cpu"))
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean().item() - 0.5) < 0.01
    with sample_rng.per_sample(keys[[7, 3]]):
        assert torch.equal(sample_rng.uniform(2, 1, 8, torch.device("cpu")), u[[7, 3]])
    assert not torch.equal(sample_rng.sample_keys(1, torch.arange(4)), keys[:4])  # the seed matters


def test_patch_dropout_and_drop_path_of_a_sample_do_not_depend_on_its_batch():
    x = torch.randn(6, 1 + 16, 8)
    keys = sample_rng.sample_keys(3, torch.tensor([10, 11, 12, 13, 14, 15]))
    drop = DropPath(0.5, salt=2).train()
    with sample_rng.per_sample(keys):
        whole, keep = patch_dropout(x, 0.5)
        dropped = drop(x, 1)
    for i in range(6):
        with sample_rng.per_sample(keys[i:i + 1]):
            one, k = patch_dropout(x[i:i + 1], 0.5)
            assert torch.equal(one, whole[i:i + 1]) and torch.equal(k, keep[i:i + 1])
            assert torch.equal(drop(x[i:i + 1], 1), dropped[i:i + 1])
    assert len({tuple(k.tolist()) for k in keep}) > 1  # samples are dropped differently
    with sample_rng.per_sample(keys):
        assert not torch.equal(drop(x, 0), dropped)  # the two branches of a block draw apart


def test_mim_masks_follow_their_sample_seed():
    masker = BlockMaskGenerator(8)
    seeds = [11, 22, 33]
    batch = masker(3, seeds)
    assert all(torch.equal(masker(1, [s])[0], batch[i]) for i, s in enumerate(seeds))
    assert not torch.equal(batch[0], batch[1])


def test_keyed_init_is_the_same_on_a_plain_and_a_meta_build():
    cfg = get_model_config("evaclip-tiny")
    plain = create_model(cfg)
    with torch.no_grad(), keyed_by_name(plain, 7):
        plain.init_weights()
    meta = create_model(cfg, device="meta")
    meta.to_empty(device="cpu")
    with torch.no_grad(), keyed_by_name(meta, 7):
        meta.init_weights()
        meta.init_buffers()
    a, b = plain.state_dict(), meta.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad(), keyed_by_name(meta, 8):
        meta.init_weights()
    assert not torch.equal(meta.visual.blocks[0].attn.proj.weight, plain.visual.blocks[0].attn.proj.weight)
    # The distributions are the model's own: depth-scaled projections, a tiny head, unit norms.
    w = plain.visual.blocks[1].attn.proj.weight
    assert abs(w.std().item() - 0.02 / 2) < 0.003
    assert torch.equal(plain.visual.norm.weight, torch.ones_like(plain.visual.norm.weight))
