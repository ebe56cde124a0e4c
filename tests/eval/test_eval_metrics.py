"""Metrics against naive pure-Python references and hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from evaclip.eval.metrics import (average_precision, classification_metrics, mean_per_class_recall, mean_recall,
                                  MISS, multilabel_metrics, predictions, retrieval_recall, target_ranks,
                                  topk_accuracy, video_score)


def naive_order(row):
    """Indices sorted best first; ties go to the lower index (what argmax does). Non-finite scores come from
    a broken model: they are never ranked (a query whose target is one is a miss at every k)."""
    return sorted((j for j in range(len(row)) if math.isfinite(row[j])), key=lambda j: (-row[j], j))


def naive_topk(logits, targets, k):
    if k > len(logits[0]):
        return float("nan")
    return sum(t in naive_order(row)[:k] for row, t in zip(logits, targets)) / len(targets)


def naive_balanced_accuracy(preds, targets):
    recalls = []
    for c in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == c]
        recalls.append(sum(preds[i] == c for i in idx) / len(idx))
    return sum(recalls) / len(recalls)


def naive_retrieval(sim, owner, k):
    """sim[i][t] image-text scores; owner[t] = image of caption t."""
    n_img, n_txt = len(sim), len(sim[0])
    t2i = sum(owner[t] in naive_order([sim[i][t] for i in range(n_img)])[:k] for t in range(n_txt)) / n_txt
    i2t = sum(any(owner[t] == i for t in naive_order(sim[i])[:k]) for i in range(n_img)) / n_img
    return t2i, i2t


def test_topk_hand_made_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 0.0, 0.0],   # tie between 1 and 2: class 1 ranks first
                           [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],   # all tied: class 5 has rank 5
                           [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    targets = torch.tensor([2, 5, 5])
    acc = topk_accuracy(logits, targets, ks=(1, 2, 5, 6))
    assert acc[1] == pytest.approx(1 / 3)   # only row 2
    assert acc[2] == pytest.approx(2 / 3)   # row 0 (rank 1) and row 2
    assert acc[5] == pytest.approx(2 / 3)   # row 1 has rank 5, not < 5
    assert acc[6] == pytest.approx(1.0)
    # top-1 agrees with argmax's tie-breaking
    assert acc[1] == pytest.approx((logits.argmax(1) == targets).float().mean().item())


def test_top5_is_nan_below_five_classes():
    acc = topk_accuracy(torch.randn(7, 4), torch.randint(0, 4, (7,)), ks=(1, 5))
    assert not math.isnan(acc[1]) and math.isnan(acc[5])
    assert math.isnan(classification_metrics(torch.randn(3, 2), torch.tensor([0, 1, 1]))["acc5"])


@pytest.mark.parametrize("seed", range(5))
def test_topk_matches_naive_on_random_integer_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 4, size=(40, 9)).astype(np.float32)  # many ties on purpose
    targets = rng.integers(0, 9, size=40)
    acc = topk_accuracy(logits, targets, ks=(1, 3, 5), chunk_size=7)
    for k in (1, 3, 5):
        assert acc[k] == pytest.approx(naive_topk(logits.tolist(), targets.tolist(), k))


def test_mean_per_class_recall_hand_made_and_missing_class():
    # class 0: 2/3 right, class 1: 1/1, class 2 never occurs in targets (only predicted), class 3: 0/2
    targets = [0, 0, 0, 1, 3, 3]
    preds = [0, 0, 2, 1, 2, 0]
    expected = (2 / 3 + 1 + 0) / 3
    assert mean_per_class_recall(preds, targets, num_classes=5) == pytest.approx(expected)
    assert mean_per_class_recall(preds, targets, num_classes=5) == pytest.approx(naive_balanced_accuracy(preds, targets))


@pytest.mark.parametrize("seed", range(3))
def test_mean_per_class_recall_matches_naive_random(seed):
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, 6, 50), rng.integers(0, 7, 50)
    assert mean_per_class_recall(p, t) == pytest.approx(naive_balanced_accuracy(p.tolist(), t.tolist()))


def test_retrieval_hand_made_several_captions():
    # 2 images, 4 captions: captions 0,1 -> image 0; 2,3 -> image 1. Identity-ish features in 2-D.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.2, 0.9],    # caption of image 0 that looks like image 1
                        [0.8, 0.1],    # good caption of image 0
                        [0.0, 1.0],
                        [0.9, 0.0]])   # caption of image 1 that looks like image 0
    owner = torch.tensor([0, 0, 1, 1])
    r = retrieval_recall(img, txt, owner, ks=(1, 2))
    # text->image: captions 1 and 2 hit at 1; captions 0 and 3 miss at 1; all hit at 2 (only 2 images)
    assert r["image_retrieval_recall@1"] == pytest.approx(0.5)
    assert r["image_retrieval_recall@2"] == pytest.approx(1.0)
    # image->text: image 0's best text is caption 3 (0.9, owned by image 1) -> miss at 1, hit at 2 (caption 1)
    # image 1's best text is caption 2 (1.0) -> hit at 1
    assert r["text_retrieval_recall@1"] == pytest.approx(0.5)
    assert r["text_retrieval_recall@2"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_matches_naive_with_ties_and_chunks(seed):
    rng = np.random.default_rng(seed)
    n_img, per = 7, 3
    img = rng.integers(-2, 3, size=(n_img, 4)).astype(np.float32)  # integer features -> exact ties
    owner = np.repeat(np.arange(n_img), per)
    rng.shuffle(owner)
    txt = rng.integers(-2, 3, size=(len(owner), 4)).astype(np.float32)
    sim = (img @ txt.T).tolist()
    r = retrieval_recall(img, txt, owner, ks=(1, 5, 10), chunk_size=3)
    for k in (1, 5, 10):
        t2i, i2t = naive_retrieval(sim, owner.tolist(), k)
        assert r[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert r[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)


def test_retrieval_rejects_image_without_caption():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_recall(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))


def test_mean_recall_and_video_score():
    m = {"image_retrieval_recall@1": 0.5, "text_retrieval_recall@1": 1.0, "other": 7.0}
    assert mean_recall(m) == pytest.approx(0.75)
    assert mean_recall([0.1, 0.2, 0.6]) == pytest.approx(0.3)
    assert video_score(0.6, 0.8, "kinetics400") == pytest.approx(0.7)
    assert video_score(0.6, 0.8, "ucf101") == pytest.approx(0.6)


# ---------------------------------------------------------------------------------- multi-label (VOC2007)
def naive_ap(scores: np.ndarray, positive: np.ndarray, eleven_point: bool = False) -> float:
    """AP of one class by brute force. Default: precision and recall of 'score >= t' for every distinct t.
    Eleven-point: the devkit's loop, one point per sample down the ranking (ties in sample order)."""
    if eleven_point:
        order = np.argsort(-scores, kind="stable")
        hits = np.cumsum(positive[order])
        points = [(hits[i] / (i + 1), hits[i] / positive.sum()) for i in range(len(order))]
        return float(np.mean([max(p for p, r in points if r >= level - 1e-12) for level in np.linspace(0, 1, 11)]))
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        p, r = (positive & predicted).sum() / predicted.sum(), (positive & predicted).sum() / positive.sum()
        ap += (r - previous_recall) * p
        previous_recall = r
    return float(ap)


def test_average_precision_closed_forms():
    scores = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    targets = torch.tensor([[0], [0], [1], [1]])
    assert average_precision(scores, targets).item() == pytest.approx(5 / 6)  # (1/2)(1) + (1/2)(2/3)
    # 11-point: best precision 1 up to recall 0.5 (6 levels), 2/3 above (5 levels)
    assert average_precision(scores, targets, eleven_point=True).item() == pytest.approx((6 + 5 * 2 / 3) / 11)
    perfect = average_precision(torch.tensor([[3.0], [2.0], [1.0]]), torch.tensor([[1], [1], [0]]))
    assert perfect.item() == 1.0
    # ties: one threshold for the default AP, sample order for the devkit's 11-point AP
    tied, y = torch.tensor([[1.0], [1.0], [0.0]]), torch.tensor([[1], [0], [1]])
    assert average_precision(tied, y).item() == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(tied, y, eleven_point=True).item() == pytest.approx((6 + 5 * 2 / 3) / 11)
    y5 = torch.tensor([[1], [0], [0], [1], [0]])
    assert average_precision(torch.zeros(5, 1), y5).item() == pytest.approx(0.4)  # precision = positive rate
    assert average_precision(torch.zeros(5, 1), y5, eleven_point=True).item() == pytest.approx((6 + 5 * 0.5) / 11)
    # a class without positives is NaN
    ap = average_precision(torch.rand(4, 2), torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]]))
    assert not math.isnan(ap[0].item()) and math.isnan(ap[1].item())
    # a positive with a non-finite score is never retrieved: it counts in recall's denominator only
    assert average_precision(torch.tensor([[float("nan")], [0.0]]), torch.tensor([[1], [0]])).item() == 0.0
    assert average_precision(torch.tensor([[float("inf")], [1.0], [0.0]]), torch.tensor([[1], [1], [0]])).item() \
        == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_brute_force_with_ties_and_ignored(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(60, 5)), 1)  # rounding makes ties
    positive = rng.random((60, 5)) < 0.3
    positive[0] = True
    ignore = rng.random((60, 5)) < 0.15
    ignore[0] = False
    for eleven in (False, True):
        ap = average_precision(torch.tensor(scores), torch.tensor(positive), torch.tensor(ignore), eleven_point=eleven)
        for c in range(5):
            keep = ~ignore[:, c]
            assert ap[c].item() == pytest.approx(naive_ap(scores[keep, c], positive[keep, c], eleven), abs=1e-12)


def test_multilabel_metrics_count_difficult_as_clip_benchmark_and_ignore_it_as_the_devkit():
    # samples: difficult-only, present, absent for class 0; class 1 ranked perfectly; class 2 never present
    logits = torch.tensor([[0.0, 0.5, 0.1], [2.0, 0.2, 0.3], [1.0, 0.9, 0.2]])
    targets = torch.tensor([[-1, 0, 0], [1, 0, 0], [0, 1, 0]])
    m = multilabel_metrics(logits, targets)
    # CLIP_benchmark: the difficult sample is a positive ranked last: AP (1 + 2/3) / 2; class 2 counts 0
    assert m["mean_average_precision"] == pytest.approx((5 / 6 + 1.0 + 0.0) / 3)
    # devkit: the difficult sample leaves class 0's ranking (perfect); class 2 has no positives: left out
    assert m["mean_average_precision_voc07"] == pytest.approx(1.0)


NAN, INF = float("nan"), float("inf")


def sprinkle_nonfinite(x: np.ndarray, rng, rate: float) -> np.ndarray:
    x = x.copy()
    hit = rng.random(x.shape) < rate
    x[hit] = rng.choice([NAN, INF, -INF], size=int(hit.sum()))
    return x


def test_nonfinite_target_is_a_miss_and_nonfinite_rivals_never_win():
    scores = torch.tensor([[NAN, 1.0, 2.0],     # NaN target: old code ranked it first (nothing is > NaN)
                           [INF, 1.0, 2.0],     # +inf target: a miss as well
                           [0.5, NAN, INF],     # finite target, non-finite rivals: rank 0
                           [NAN, NAN, NAN]])    # nothing finite
    targets = torch.tensor([0, 0, 0, 1])
    assert target_ranks(scores, targets).tolist() == [MISS, MISS, 0, MISS]
    assert predictions(scores, targets).tolist() == [-1, -1, 0, -1]
    m = classification_metrics(scores, targets)
    assert m["acc1"] == pytest.approx(0.25) and m["num_nonfinite_scores"] == 7
    assert m["mean_per_class_recall"] == pytest.approx((1 / 3 + 0) / 2)


def test_all_nan_logits_score_nothing():
    logits = torch.full((12, 6), NAN)
    targets = torch.arange(12) % 6
    m = classification_metrics(logits, targets)
    assert m["acc1"] == 0.0 and m["acc5"] == 0.0 and m["mean_per_class_recall"] == 0.0
    assert m["num_nonfinite_scores"] == 72
    assert topk_accuracy(logits, targets, ks=(6,))[6] == 0.0  # a miss even when k covers every class


@pytest.mark.parametrize("seed", range(4))
def test_topk_and_recall_match_naive_with_nonfinite_scores(seed):
    rng = np.random.default_rng(seed)
    logits = sprinkle_nonfinite(rng.integers(0, 4, size=(50, 7)).astype(np.float64), rng, 0.25)
    targets = rng.integers(0, 7, size=50)
    acc = topk_accuracy(logits, targets, ks=(1, 3, 5), chunk_size=9)
    for k in (1, 3, 5):
        assert acc[k] == pytest.approx(naive_topk(logits.tolist(), targets.tolist(), k))
    naive_pred = [naive_order(row)[0] if naive_order(row) and math.isfinite(row[t]) else -1
                  for row, t in zip(logits.tolist(), targets.tolist())]
    m = classification_metrics(logits, targets)
    assert m["mean_per_class_recall"] == pytest.approx(naive_balanced_accuracy(naive_pred, targets.tolist()))
    assert m["num_nonfinite_scores"] == int((~np.isfinite(logits)).sum())


def test_retrieval_with_nan_features_scores_nothing():
    img, txt = torch.full((3, 4), NAN), torch.randn(6, 4)
    r = retrieval_recall(img, txt, torch.tensor([0, 0, 1, 1, 2, 2]), ks=(1, 5, 10))
    assert all(r[f"{d}_retrieval_recall@{k}"] == 0.0 for d in ("image", "text") for k in (1, 5, 10))
    assert r["num_nonfinite_scores"] == 18


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_matches_naive_with_nonfinite_features(seed):
    rng = np.random.default_rng(seed)
    n_img, per = 6, 2
    img = sprinkle_nonfinite(rng.integers(-2, 3, size=(n_img, 3)).astype(np.float32), rng, 0.08)
    owner = np.repeat(np.arange(n_img), per)
    rng.shuffle(owner)
    txt = sprinkle_nonfinite(rng.integers(-2, 3, size=(len(owner), 3)).astype(np.float32), rng, 0.08)
    with np.errstate(invalid="ignore"):
        sim = (img @ txt.T).tolist()
    r = retrieval_recall(img, txt, owner, ks=(1, 3, 12), chunk_size=4)
    for k in (1, 3, 12):
        t2i, i2t = naive_retrieval(sim, owner.tolist(), k)
        assert r[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert r[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)


def test_multilabel_with_nan_logits_scores_nothing():
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    m = multilabel_metrics(torch.full((3, 2), NAN), targets)
    assert m["mean_average_precision"] == 0.0 and m["mean_average_precision_voc07"] == 0.0
    assert m["num_nonfinite_scores"] == 6
