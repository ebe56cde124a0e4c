"""End-to-end tests of the trainer on the real emoji sample shipped in the package."""
import math
import tarfile
import io

import pytest
import torch
from PIL import Image

import evaclip
from evaclip.errors import TrainingError
from evaclip.eval.metrics import retrieval_recall
from evaclip.train.config import apply_overrides
from evaclip.train.metrics import read_metrics
from evaclip.train.recipes import get_recipe
from evaclip.train.recipes.tiny import sample_shards
from evaclip.train.trainer import train
from evaclip.transforms import image_transform


def _tiny(tmp_path, *overrides):
    return apply_overrides(get_recipe("tiny"), [f"out_dir={tmp_path}", "progress=false", "tensorboard=false",
                                                *overrides])


def _heldout_recall(run_dir) -> dict:
    model = evaclip.create_model(run_dir / "model_config.json", pretrained=run_dir / "final.safetensors").eval()
    tokenizer = evaclip.get_tokenizer(run_dir / "model_config.json")
    transform = image_transform(model.visual.image_size, is_train=False)
    with tarfile.open(sample_shards("val")) as t:
        members = {m.name: m for m in t.getmembers()}
        keys = sorted({n.split(".")[0] for n in members})
        images = torch.stack([transform(Image.open(io.BytesIO(t.extractfile(members[k + ".png"]).read())))
                              for k in keys])
        captions = [t.extractfile(members[k + ".txt"]).read().decode() for k in keys]
    with torch.no_grad():
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokenizer(captions), normalize=True)
    return retrieval_recall(img, txt, torch.arange(len(keys)), ks=(1, 5))


def test_tiny_recipe_learns_real_pairs(tmp_path):
    summary = train(_tiny(tmp_path, "steps=80", "checkpoint_every=0"))
    records = read_metrics(tmp_path / "metrics.jsonl")
    first = sum(r["loss"] for r in records[:2]) / 2
    last = sum(r["loss"] for r in records[-4:]) / 4
    assert first > 0.9 * math.log(64)  # starts near chance: ln(batch)
    assert last < 0.6 * math.log(64), records[-4:]
    assert summary["steps"] == 80 and summary["skipped_steps"] == 0
    # Held-out pairs: the Noto renderings of trained emoji; chance R@1 = 1/128, R@5 = 5/128.
    recall = _heldout_recall(tmp_path)
    assert recall["text_retrieval_recall@5"] > 4 * 5 / 128, recall
    assert recall["image_retrieval_recall@5"] > 4 * 5 / 128, recall
    # What training writes: metrics with the promised fields, a loadable config and weights.
    assert {"step", "loss", "lr", "samples_per_s"} <= set(records[0])
    assert (tmp_path / "final.safetensors").is_file() and (tmp_path / "model_config.json").is_file()


# Kill -9 and resume, bit-identical with the same samples: tests/reliability/test_kill_resume.py (1 process and 2
# ranks, at 10 and 6 seeded points).


def test_resume_latest_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train(_tiny(tmp_path, "steps=20", "resume=latest"))
    assert not (tmp_path / "final.safetensors").exists()


def test_nonfinite_losses_skip_steps_then_stop(tmp_path, monkeypatch):
    from evaclip.train import faults
    monkeypatch.setenv("EVACLIP_FAULTS", "nan_loss@2,nan_grad@4,nan_loss@5,inf_loss@6")
    faults.reload()
    try:
        with pytest.raises(TrainingError, match=r"3 steps in a row \(last at step 6\)"):
            train(_tiny(tmp_path, "steps=10", "checkpoint_every=0", "max_nonfinite_steps=3",
                        "data.batch_size=16", "schedule.warmup_steps=2"))
    finally:
        monkeypatch.delenv("EVACLIP_FAULTS")
        faults.reload()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["skipped"]] == [2, 4, 5, 6]


@pytest.mark.parametrize("chunks", [2, 4])
def test_feature_cached_accumulation_equals_the_full_batch_step(tmp_path, chunks):
    """accum_steps=k gives the loss and the parameters of the full-batch step (GradCache is exact)."""
    from evaclip.train.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        tokens = torch.randint(1, 49000, (8, 77), generator=g)
        tokens[:, 12] = 49407
        batches.append((torch.randn(8, 3, 32, 32, generator=g), tokens, {}))
    results = {}
    for k in (1, chunks):
        cfg = _tiny(tmp_path / f"k{k}", "steps=3", "schedule.warmup_steps=1", "data.batch_size=8",
                    f"accum_steps={k}", "model.name=evaclip-tiny-18b", "checkpoint_every=0")
        trainer = Trainer(cfg, batches=batches)
        losses = []
        for images, tokens, _ in batches:
            losses.append(trainer.train_step(images, tokens)["loss"])
            trainer.step += 1
        results[k] = (losses, {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()})
    assert results[1][0] == pytest.approx(results[chunks][0], rel=1e-5)
    for name, p in results[1][1].items():
        torch.testing.assert_close(results[chunks][1][name], p, rtol=1e-4, atol=1e-6, msg=name)
    # The weights moved from their initial values (same seed as the trainer), so the comparison is not vacuous.
    torch.manual_seed(0)
    fresh = evaclip.create_model("evaclip-tiny-18b")
    assert not torch.equal(fresh.state_dict()["visual.blocks.0.attn.qkv.weight"],
                           results[1][1]["visual.blocks.0.attn.qkv.weight"])


def test_crop_scale_reaches_the_train_transform(tmp_path, monkeypatch):
    import evaclip.transforms as transforms
    seen = []
    real = transforms.image_transform

    def recording(*args, **kwargs):
        seen.append((kwargs.get("is_train"), kwargs.get("scale")))
        return real(*args, **kwargs)

    monkeypatch.setattr(transforms, "image_transform", recording)
    train(_tiny(tmp_path, "steps=2", "schedule.warmup_steps=0", "checkpoint_every=0", "data.crop_scale=0.3,0.6"))
    assert (True, (0.3, 0.6)) in seen


@pytest.mark.parametrize("bad", ["0,1", "0.8,0.5", "0.5,1.5", "0.5"])
def test_impossible_crop_scale_is_refused_before_training(tmp_path, bad):
    from evaclip.errors import ConfigError
    with pytest.raises(ConfigError, match="crop_scale"):
        train(_tiny(tmp_path / "run", "steps=2", "schedule.warmup_steps=0", f"data.crop_scale={bad}"))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
