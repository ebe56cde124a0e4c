"""Dataset name / path resolution, custom class-name and template files (best-of-transforms: test_eval_cli)."""
import json

import pytest

from evaclip.errors import ConfigError, DatasetError
from evaclip.eval.runner import EvalOptions, _classnames_templates, evaluate, resolve_dataset


def test_resolve_dataset(tmp_path):
    (tmp_path / "cifar10").mkdir()
    assert resolve_dataset(str(tmp_path / "cifar10"), None) == ("cifar10", tmp_path / "cifar10")
    assert resolve_dataset("cifar10", str(tmp_path)) == ("cifar10", tmp_path / "cifar10")
    assert resolve_dataset("wds/cifar10", str(tmp_path) + "/{dataset_cleaned}") == ("wds/cifar10", tmp_path / "cifar10")
    with pytest.raises(DatasetError, match="--dataset-root"):
        resolve_dataset("cifar10", None)


def test_custom_classnames_and_templates_files(tmp_path):
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    (tmp_path / "t.json").write_text(json.dumps({"pets": ["a photo of my {c}"], "other": ["x {c}"]}))
    (tmp_path / "cupl.json").write_text(json.dumps({"cat": ["a small furry cat"], "dog": ["a loyal dog"]}))
    opts = EvalOptions(classnames_file=str(tmp_path / "names.txt"), templates_file=str(tmp_path / "t.json"))
    assert _classnames_templates("pets", ["a", "b"], None, opts) == (["cat", "dog"], ["a photo of my {c}"])
    opts = EvalOptions(templates_file=str(tmp_path / "cupl.json"))
    names, templates = _classnames_templates("pets", ["cat", "dog"], None, opts)
    assert templates == {"cat": ["a small furry cat"], "dog": ["a loyal dog"]}
    # defaults: the dataset's own templates, then the shipped ones
    assert _classnames_templates("pets", ["cat"], ["{c}!"], EvalOptions())[1] == ["{c}!"]
    assert _classnames_templates("pets", ["cat"], None, EvalOptions())[1] == ["a photo of a {c}, a type of pet."]
    with pytest.raises(ConfigError, match="lists 2 class names but the dataset has 3"):
        _classnames_templates("pets", ["a", "b", "c"], None, EvalOptions(classnames_file=str(tmp_path / "names.txt")))
    with pytest.raises(ConfigError, match="does not exist"):
        _classnames_templates("pets", ["a"], None, EvalOptions(templates_file=str(tmp_path / "nope.txt")))


def test_unknown_transform_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown image transform"):
        evaluate(None, None, "zeroshot_classification", "x", None, lambda m: m, ["bogus"], EvalOptions())


def test_voc2007_multilabel_through_the_runner(tmp_path, toy_model):
    """Both transforms run, the better one is chosen by mAP, and the linear probe refuses a multi-label set."""
    from eval_helpers import shapes, tiny_transform
    from test_eval_datasets import write_voc
    from evaclip.tokenizer import tokenize
    write_voc(tmp_path / "voc", shapes(2, seed=1), extra_positive={(0, 2)})
    write_voc(tmp_path / "voc", shapes(2, seed=1), split="train")
    name, path = resolve_dataset("voc2007_multilabel", str(tmp_path / "voc"))
    assert name == "voc2007_multilabel"
    opts = EvalOptions(workers=0, templates_file=None)

    def blank(image):  # every image the same: all scores tie, so AP falls to the positive rate
        return tiny_transform(image) * 0

    factory = {"squash": blank, "shortest": tiny_transform}.get
    metrics, extras = evaluate(toy_model, tokenize, "zeroshot_classification", name, path, factory,
                               ["squash", "shortest"], opts)
    by = extras["metrics_by_transform"]
    assert by["shortest"]["mean_average_precision"] > by["squash"]["mean_average_precision"]
    assert extras["transform"] == "shortest" and metrics == by["shortest"]  # chosen by mAP
    with pytest.raises(ConfigError, match="multi-label"):
        evaluate(toy_model, tokenize, "linear_probe", name, path, lambda mode: tiny_transform, ["shortest"], opts)
