"""Single-process checks of the contrastive losses against naive explicit-loop implementations."""

import math

import pytest
import torch

from evaclip.errors import ConfigError
from evaclip.train.loss import ClipLoss, SigLipLoss, caption_ids


def naive_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE written out sample by sample: -log softmax of the matching pair, both directions."""
    n = img.shape[0]
    total = img.new_zeros(())
    for i in range(n):
        row_i2t = torch.stack([scale * torch.dot(img[i], txt[j]) for j in range(n)])
        row_t2i = torch.stack([scale * torch.dot(txt[i], img[j]) for j in range(n)])
        total = total - (row_i2t[i] - torch.logsumexp(row_i2t, 0)) - (row_t2i[i] - torch.logsumexp(row_t2i, 0))
    return total / (2 * n)


def naive_dedup_clip_loss(img, txt, scale, captions: list[str]) -> torch.Tensor:
    """InfoNCE where, for pair i, every other pair with caption i's text is dropped from both softmaxes."""
    n = img.shape[0]
    total = img.new_zeros(())
    for i in range(n):
        keep = [j for j in range(n) if j == i or captions[j] != captions[i]]
        row_i2t = torch.stack([scale * torch.dot(img[i], txt[j]) for j in keep])
        row_t2i = torch.stack([scale * torch.dot(txt[i], img[j]) for j in keep])
        pos = keep.index(i)
        total = total - (row_i2t[pos] - torch.logsumexp(row_i2t, 0)) - (row_t2i[pos] - torch.logsumexp(row_t2i, 0))
    return total / (2 * n)


def naive_siglip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    n = img.shape[0]
    total = img.new_zeros(())
    for i in range(n):
        for j in range(n):
            z = scale * torch.dot(img[i], txt[j]) + bias
            label = 1.0 if i == j else -1.0
            total = total - torch.log(torch.sigmoid(label * z))
    return total / n


def _features(n: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


def _two_leaf_sets(img, txt, scale: float = 7.0):
    """Two independent grad-tracking copies of (image features, text features, logit scale): one for the
    loss under test, one for the naive reference, so their gradients can be compared."""
    base = (img, txt, torch.tensor(scale, dtype=torch.float64))
    return [[t.clone().requires_grad_() for t in base] for _ in range(2)]


@pytest.mark.parametrize("local_loss,gather_with_grad", [(True, True), (False, True), (False, False)])
def test_clip_loss_matches_naive_loss_and_gradients(local_loss: bool, gather_with_grad: bool) -> None:
    img, txt = _features()
    leaves, refs = _two_leaf_sets(img, txt)
    loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)(*leaves)
    ref = naive_clip_loss(*refs)
    torch.testing.assert_close(loss.double(), ref)
    loss.backward()
    ref.backward()
    for a, b in zip(leaves, refs):
        torch.testing.assert_close(a.grad, b.grad)


def test_clip_loss_is_log_batch_for_uninformative_features() -> None:
    # All features equal: every logit is the same, so each CE is exactly ln(n).
    img = torch.ones(8, 4) / 2
    assert ClipLoss()(img, img.clone(), 10.0).item() == pytest.approx(math.log(8), rel=1e-6)


def test_clip_loss_is_small_for_perfectly_aligned_pairs() -> None:
    eye = torch.eye(4)
    assert ClipLoss()(eye, eye.clone(), 100.0).item() < 1e-6


def test_siglip_loss_matches_naive_loss_and_gradients() -> None:
    img, txt = _features(seed=1)
    vals = [img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)]
    leaves = [v.clone().requires_grad_() for v in vals]
    refs = [v.clone().requires_grad_() for v in vals]
    loss = SigLipLoss()(*leaves)
    ref = naive_siglip_loss(*refs)
    torch.testing.assert_close(loss.double(), ref)
    loss.backward()
    ref.backward()
    for a, b in zip(leaves, refs):
        torch.testing.assert_close(a.grad, b.grad)


def test_siglip_init_constants_follow_the_paper() -> None:
    assert SigLipLoss.init_logit_bias == -10.0
    assert math.exp(SigLipLoss.init_logit_scale) == pytest.approx(10.0)


def test_bad_inputs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="gather_with_grad"):
        ClipLoss(local_loss=True, gather_with_grad=False)
    with pytest.raises(ConfigError, match="equal shapes"):
        ClipLoss()(torch.zeros(4, 3), torch.zeros(5, 3), 1.0)
    with pytest.raises(ConfigError, match="equal shapes"):
        SigLipLoss()(torch.zeros(4), torch.zeros(4), 1.0, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_under_bf16_autocast_on_cuda() -> None:
    g = torch.Generator().manual_seed(4)
    x_img, x_txt = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    proj = torch.randn(32, 16, generator=g)
    scale, bias = torch.tensor(20.0), torch.tensor(-5.0)
    results = []
    for device, autocast in (("cpu", False), ("cuda", True)):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            img = torch.nn.functional.normalize(x_img.to(device) @ proj.to(device), dim=-1)
            txt = torch.nn.functional.normalize(x_txt.to(device) @ proj.to(device), dim=-1)
            clip = ClipLoss()(img, txt, scale.to(device))
            sig = SigLipLoss()(img, txt, scale.to(device), bias.to(device))
        assert clip.dtype == torch.float32 and sig.dtype == torch.float32
        results.append((clip.item(), sig.item()))
    assert results[1] == pytest.approx(results[0], rel=3e-2)


CAPTIONS = ["a cat", "a dog", "a cat", "the sun", "a dog", "a cat"]  # pairs 0/2/5 and 1/4 share captions


def _tokens(captions: list[str]) -> torch.Tensor:
    from evaclip.tokenizer import tokenize
    return tokenize(captions, context_length=16)


@pytest.mark.parametrize("local_loss,gather_with_grad", [(True, True), (False, True), (False, False)])
def test_duplicate_captions_are_dropped_from_the_softmax(local_loss: bool, gather_with_grad: bool) -> None:
    img, txt = _features()
    leaves, refs = _two_leaf_sets(img, txt)
    scale = leaves[2].detach()
    loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, mask_duplicate_texts=True)
    loss = loss_fn(*leaves, _tokens(CAPTIONS))
    ref = naive_dedup_clip_loss(*refs, CAPTIONS)
    torch.testing.assert_close(loss.double(), ref)
    loss.backward()
    ref.backward()
    for a, b in zip(leaves, refs):
        torch.testing.assert_close(a.grad, b.grad)
    # Guards the test: the masking changes the loss here, and is a no-op when every caption is unique.
    assert not torch.allclose(loss.detach(), ClipLoss()(img, txt, scale))
    unique = [f"caption {i}" for i in range(len(CAPTIONS))]
    torch.testing.assert_close(loss_fn(img, txt, scale, _tokens(unique)), ClipLoss()(img, txt, scale))


def test_caption_ids_are_equal_exactly_for_equal_token_rows() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 49408, (500, 77), generator=g)
    rows[250:] = rows[:250]  # every row twice
    ids = caption_ids(rows)
    assert ids.dtype == torch.int64
    same_ids = ids[:, None] == ids[None, :]
    same_rows = (rows[:, None, :] == rows[None, :, :]).all(-1)
    assert torch.equal(same_ids, same_rows)


def test_duplicate_masking_needs_the_tokens() -> None:
    img, txt = _features()
    with pytest.raises(ConfigError, match="needs the batch's tokens"):
        ClipLoss(mask_duplicate_texts=True)(img, txt, 7.0)
    with pytest.raises(ConfigError, match="needs the batch's tokens"):
        ClipLoss(mask_duplicate_texts=True)(img, txt, 7.0, _tokens(CAPTIONS[:3]))
