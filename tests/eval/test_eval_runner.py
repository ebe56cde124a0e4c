"""Dataset name / path resolution, custom class-name and template files (best-of-transforms: test_eval_cli)."""
import json

import pytest

from evaclip.errors import ConfigError, DatasetError
from evaclip.eval.runner import EvalOptions, _classnames_templates, evaluate, resolve_dataset


def test_resolve_dataset(tmp_path):
    (tmp_path / "cifar10").mkdir()
    assert resolve_dataset(str(tmp_path / "cifar10"), None) == ("cifar10", tmp_path / "cifar10")
    assert resolve_dataset("cifar10", str(tmp_path)) == ("cifar10", tmp_path / "cifar10")
    assert resolve_dataset("wds/cifar10", str(tmp_path) + "/{dataset_cleaned}") == ("cifar10", tmp_path / "wds-cifar10")
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
