"""Bad evaluation data and result files (the evaluation protocol's part), each a real `evaclip` process,
all run at once. Every one exits with code 2 and one line that says what was wrong and what to do, no
traceback, and writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rel_kit import as_dict, as_proc, assert_clean_error, cli, listing, once, run_many

MODEL = ["--model", "evaclip-tiny", "--workers", "0"]


def _images(folder: Path, classes, rng, per_class: int = 2, empty=()) -> None:
    for c in classes:
        (folder / c).mkdir(parents=True)
        if c not in empty:
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def _make_inputs(tmp: Path) -> None:
    if (tmp / "shapes").exists():
        return
    rng = np.random.default_rng(0)
    _images(tmp / "shapes", ("red", "green"), rng)
    _images(tmp / "blank_templates", ("red", "green"), rng)
    (tmp / "blank_templates" / "templates.txt").write_text("\n   \n\n")
    _images(tmp / "blank_classnames", ("red", "green"), rng)
    (tmp / "blank_classnames" / "classnames.txt").write_text("\n")
    _images(tmp / "latin1_classnames", ("red", "green"), rng)
    (tmp / "latin1_classnames" / "classnames.txt").write_bytes("r\xe9d\ngreen\n".encode("latin-1"))
    (tmp / "blank.txt").write_text("\n\n")
    # linear probe: the test split has no "blue" folder at all, so its labels would mean other classes
    _images(tmp / "splits" / "train", ("blue", "green", "red"), rng)
    _images(tmp / "splits" / "test", ("green", "red"), rng)
    # retrieval: a quote that is never closed swallows the rest of the file into one field, over the bound
    _images(tmp / "captions", ("x",), rng, per_class=1)
    (tmp / "captions" / "captions.csv").write_text('image,caption\nx/0.png,a cat\nx/0.png,"' + "y" * (9 << 20))
    (tmp / "header_only").mkdir()
    (tmp / "header_only" / "captions.csv").write_text("image,caption\n")
    # eval report: result files that cannot be tabulated, and nothing else
    record = {"dataset": "cifar10", "model": "m", "pretrained": "none", "task": "zeroshot_classification",
              "language": "en"}
    (tmp / "results_null").mkdir()
    (tmp / "results_null" / "r.json").write_text(json.dumps({**record, "metrics": None}))
    (tmp / "results_text").mkdir()
    (tmp / "results_text" / "r.json").write_text(json.dumps({**record, "metrics": {"acc1": "high"}}))
    (tmp / "results_cut").mkdir()
    (tmp / "results_cut" / "r.json").write_text('{"dataset": "cifar10", "metrics": {"acc1": 0.')


def _cases(tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (arguments, fragments of the one-line message: what is wrong and what to do)."""
    out = tmp / "out"

    def ev(dataset: str, *more: str) -> list[str]:
        return ["eval", *MODEL, "--dataset", str(tmp / dataset), "--output", f"{out}/{dataset}.json", *more]
    return {
        "templates_txt_of_blank_lines": (ev("blank_templates"), ("templates.txt has no entries", "remove the file")),
        "classnames_txt_of_blank_lines": (ev("blank_classnames"), ("classnames.txt has no entries",)),
        "classnames_txt_not_utf8": (ev("latin1_classnames"), ("classnames.txt is not UTF-8", "save it as UTF-8")),
        "templates_option_of_blank_lines": (ev("shapes", "--templates", str(tmp / "blank.txt")),
                                            ("blank.txt has no entries",)),
        "linear_probe_splits_with_other_classes": (ev("splits", "--task", "linear_probe"),
                                                   ("different class lists", "train has ['blue']",
                                                    "same class folders")),
        "captions_csv_runaway_field": (ev("captions", "--task", "zeroshot_retrieval"),
                                       ("captions.csv:3", "at most 8 MiB", "fix the quoting")),
        "captions_csv_without_rows": (ev("header_only", "--task", "zeroshot_retrieval"), ("has a header but no rows",)),
        "report_metrics_null": (["eval", "report", str(tmp / "results_null")],
                                ("no usable result JSON files", "r.json", '"metrics" is null')),
        "report_metric_not_a_number": (["eval", "report", str(tmp / "results_text")],
                                       ("no usable result JSON files", '"metrics.acc1" is not a number')),
        "report_truncated_json": (["eval", "report", str(tmp / "results_cut")], ("r.json: not readable JSON",)),
    }


@pytest.fixture(scope="module")
def bad_eval_data(tmp_path_factory):
    def make(tmp: Path) -> dict:
        _make_inputs(tmp)
        cases = _cases(tmp)
        procs = run_many([cli(*args) for args, _ in cases.values()], cwd=tmp)
        return {name: as_dict(p) for name, p in zip(cases, procs)}
    tmp, procs = once(tmp_path_factory, "bad_eval_data", make)
    return tmp, _cases(tmp), {name: as_proc(d) for name, d in procs.items()}


NAMES = ["templates_txt_of_blank_lines", "classnames_txt_of_blank_lines", "classnames_txt_not_utf8",
         "templates_option_of_blank_lines", "linear_probe_splits_with_other_classes", "captions_csv_runaway_field",
         "captions_csv_without_rows", "report_metrics_null", "report_metric_not_a_number", "report_truncated_json"]


def test_the_table_is_complete(bad_eval_data):
    assert list(bad_eval_data[1]) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_bad_eval_data_gives_one_clear_line_and_exit_2(bad_eval_data, name):
    _, cases, procs = bad_eval_data
    assert_clean_error(procs[name], *cases[name][1])


def test_bad_eval_data_wrote_nothing(bad_eval_data):
    tmp, _, _ = bad_eval_data
    assert listing(tmp / "out") == []
    for results in ("results_null", "results_text", "results_cut"):
        assert listing(tmp / results) == ["r.json"]  # no report files next to the refused results


def test_report_skips_a_malformed_result_with_a_warning_and_tabulates_the_rest(tmp_path):
    from rel_kit import error_lines, run

    record = {"dataset": "vtab/cifar10", "model": "m", "pretrained": "none", "task": "zeroshot_classification",
              "language": "en"}
    (tmp_path / "good.json").write_text(json.dumps({**record, "metrics": {"acc1": 0.5}}))
    (tmp_path / "bad.json").write_text(json.dumps({**record, "metrics": None}))
    proc = run(cli("eval", "report", str(tmp_path)), timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert error_lines(proc.stderr) == [f'warning: skipped {tmp_path}/bad.json: "metrics" is null, not an object of '
                                        f'numbers']
    rows = (tmp_path / "table2_zeroshot_classification.csv").read_text().splitlines()
    assert rows[1].split(",")[7] == "50.0"  # vtab/cifar10 in the CIFAR-10 column
