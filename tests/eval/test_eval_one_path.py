"""One zero-shot path: the trainer's evaluation hook and the demo score a set exactly as `evaclip eval` does
(same loader, class names, prompts and metrics)."""
from __future__ import annotations

import pytest
from PIL import Image

from evaclip.eval import zeroshot as zeroshot_module
from evaclip.eval.catalog import default_templates
from evaclip.eval.runner import EvalOptions, resolve_dataset, run_task
from evaclip.train.config import apply_overrides
from evaclip.train.recipes import get_recipe
from evaclip.train.trainer import Trainer
from evaclip.transforms import image_transform


def _image_folder(root, classes=("cat", "dog", "fox")):
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (32, 32), (90 * i, 60 * j, 120)).save(root / c / f"{j}.png")
    return root  # no templates.txt: the prompts are the defaults, which must be the same everywhere


def test_the_training_hook_scores_a_set_as_evaclip_eval_does(tmp_path, monkeypatch):
    pets = _image_folder(tmp_path / "pets")
    cfg = apply_overrides(get_recipe("tiny"), [f"out_dir={tmp_path / 'run'}", "progress=false", "tensorboard=false",
                                               "eval.every=1", "eval.batch_size=4", f'eval.zeroshot=["{pets}"]'])
    trainer = Trainer(cfg)
    prompts = []
    encode_texts = zeroshot_module.encode_texts

    def recording(model, tokenizer, texts, **kwargs):
        prompts.append(list(texts))
        return encode_texts(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(zeroshot_module, "encode_texts", recording)
    try:
        hook = trainer.evaluate()
        name, path = resolve_dataset(str(pets), None)
        model = trainer.raw_model.eval()
        cli = run_task(model, trainer.task.tokenizer(), "zeroshot_classification", name, path,
                       image_transform(trainer.task.image_size, is_train=False), EvalOptions(workers=0))
    finally:
        trainer.close()
    hook_prompts, cli_prompts = prompts
    assert hook_prompts == cli_prompts
    assert len(cli_prompts) == 3 * len(default_templates("pets"))
    assert hook == {"zeroshot/pets/acc1": pytest.approx(cli["acc1"])}
