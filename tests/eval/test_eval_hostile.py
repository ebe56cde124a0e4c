"""`evaclip eval` under hostile input: broken models score nothing, bf16/fp16 weights run, undecodable
files are skipped and counted, the linear probe never trains on its test images, outputs are checked first."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import evaclip
from evaclip.cli.main import main
from evaclip.eval.features import encode_images, image_loader, nonfinite_weights
from evaclip.eval.linear_probe import linear_probe, stratified_split

from eval_helpers import shapes

CLASSES = ("red", "green", "blue")


def image_folder(root, n=2, seed=0):
    for i, (y, img) in enumerate(shapes(n, seed=seed)):
        (root / CLASSES[y]).mkdir(parents=True, exist_ok=True)
        img.save(root / CLASSES[y] / f"{i}.png")
    return root


def captions_folder(root, n=4, seed=0):
    root.mkdir(parents=True)
    rows = [("image", "caption")]
    for i, (y, img) in enumerate(shapes(1, seed=seed)[:n]):
        img.save(root / f"{i}.png")
        rows += [(f"{i}.png", f"a {CLASSES[y]} shape"), (f"{i}.png", f"picture number {i}")]
    with open(root / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def eval_cli(*argv):
    return main(["eval", "--model", "evaclip-tiny", "--workers", "0", *map(str, argv)])


def result(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """evaclip-tiny's weights, and the same weights with one NaN in the vision tower's first layer."""
    tmp = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = evaclip.create_model("evaclip-tiny")
    state = model.state_dict()
    torch.save(state, tmp / "good.pt")
    state["visual.patch_embed.proj.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp / "nan.pt")
    return tmp / "good.pt", tmp / "nan.pt"


def test_nan_weight_scores_no_hit_and_says_so_once(tmp_path, tiny_weights, capsys):
    """Before: the NaN scores ranked first and top-1 and every recall@k were 100%."""
    _, nan_weights = tiny_weights
    data = image_folder(tmp_path / "shapes")
    caps = captions_folder(tmp_path / "caps")
    out = tmp_path / "res" / "{dataset}_{task}.json"
    # by default such a checkpoint is refused when it is loaded
    assert eval_cli("--pretrained", nan_weights, "--dataset", data, "--output", out) == 2
    assert "non-finite" in capsys.readouterr().err and not (tmp_path / "res").exists()
    assert eval_cli("--pretrained", nan_weights, "--dataset", data, "--output", out, "--image-transform", "squash",
                    "--allow-nonfinite") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or inf" in err[0] and "visual.patch_embed.proj.weight" in err[0]
    m = result(tmp_path / "res" / "shapes_zeroshot_classification.json")["metrics"]
    assert m["acc1"] == 0.0 and m["mean_per_class_recall"] == 0.0 and m["num_nonfinite_scores"] == 6 * 3
    assert eval_cli("--pretrained", nan_weights, "--dataset", caps, "--output", out,
                    "--task", "zeroshot_retrieval", "--allow-nonfinite") == 0
    m = result(tmp_path / "res" / "caps_zeroshot_retrieval.json")["metrics"]
    recalls = {k: v for k, v in m.items() if "recall@" in k}
    assert len(recalls) == 6 and set(recalls.values()) == {0.0}  # even recall@10 with 3 images
    assert m["num_nonfinite_scores"] == 3 * 6


def test_nan_anywhere_poisons_every_feature(tmp_path, tiny_weights):
    """A NaN that reaches only some outputs (one token's embedding) still makes the whole model score nothing."""
    good, _ = tiny_weights
    state = torch.load(good, weights_only=True)
    token = int(evaclip.get_tokenizer("evaclip-tiny")(["red"])[0, 1])
    state["text.token_embedding.weight"][token, 0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    data = image_folder(tmp_path / "shapes")
    out = tmp_path / "r.json"
    assert eval_cli("--pretrained", tmp_path / "inf.pt", "--dataset", data, "--output", out,
                    "--image-transform", "squash", "--allow-nonfinite") == 0
    m = result(out)["metrics"]
    assert m["acc1"] == 0.0 and m["num_nonfinite_scores"] == 6 * 3
    model = evaclip.create_model("evaclip-tiny", pretrained=str(tmp_path / "inf.pt"), allow_nonfinite=True)
    assert nonfinite_weights(model) == ["text.token_embedding.weight"]


def test_weight_that_overflows_fp16_is_found_after_the_cast(tmp_path, tiny_weights, capsys):
    """A finite checkpoint passes the loader's check; cast to fp16, a weight of 1e6 becomes inf."""
    good, _ = tiny_weights
    state = torch.load(good, weights_only=True)
    state["visual.patch_embed.proj.weight"][0, 0, 0, 0] = 1e6
    torch.save(state, tmp_path / "big.pt")
    data = image_folder(tmp_path / "shapes")
    assert eval_cli("--pretrained", tmp_path / "big.pt", "--dataset", data, "--output", tmp_path / "r.json",
                    "--precision", "fp16", "--image-transform", "squash") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or inf" in err[0] and "visual.patch_embed.proj.weight" in err[0]
    assert result(tmp_path / "r.json")["metrics"]["acc1"] == 0.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_weights_run_without_amp(tmp_path, tiny_weights, precision):
    """Before: "Input type (float) and bias type (BFloat16) should be the same" unless --amp was given."""
    good, _ = tiny_weights
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    images = torch.rand(4, 3, 32, 32)
    ref = evaclip.create_model("evaclip-tiny", pretrained=str(good)).eval()
    low = evaclip.create_model("evaclip-tiny", pretrained=str(good), precision=precision).eval()
    with torch.no_grad():
        f_ref, f_low = encode_images(ref, images), encode_images(low, images)
    assert f_low.dtype == torch.float32 and next(low.parameters()).dtype == dtype
    assert torch.nn.functional.cosine_similarity(f_ref, f_low).min() > 0.98
    data = image_folder(tmp_path / "shapes")
    assert eval_cli("--pretrained", good, "--dataset", data, "--output", tmp_path / "r.json",
                    "--precision", precision, "--image-transform", "squash") == 0
    assert eval_cli("--pretrained", good, "--dataset", data, "--output", tmp_path / "ref.json",
                    "--image-transform", "squash") == 0
    assert result(tmp_path / "r.json")["metrics"]["acc1"] == result(tmp_path / "ref.json")["metrics"]["acc1"]


def test_undecodable_images_are_skipped_and_counted(tmp_path, tiny_weights, capsys):
    good, _ = tiny_weights
    clean = image_folder(tmp_path / "clean", n=3)
    broken = image_folder(tmp_path / "broken", n=3)
    (broken / "red" / "zz_truncated.png").write_bytes((clean / "red" / "0.png").read_bytes()[:60])
    (broken / "blue" / "zz_text.jpg").write_text("not an image")
    args = ["--pretrained", good, "--image-transform", "squash", "--batch-size", 2]
    assert eval_cli(*args, "--dataset", clean, "--output", tmp_path / "clean.json") == 0
    capsys.readouterr()
    # through DataLoader workers too: a worker must not die on the bad file
    assert eval_cli(*args, "--dataset", broken, "--output", tmp_path / "broken.json", "--workers", 1) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 2 file(s)" in err[0]
    got, ref = result(tmp_path / "broken.json")["metrics"], result(tmp_path / "clean.json")["metrics"]
    assert got["num_skipped_files"] == 2 and ref["num_skipped_files"] == 0
    assert got["acc1"] == ref["acc1"] and got["mean_per_class_recall"] == ref["mean_per_class_recall"]


def test_undecodable_retrieval_image_is_left_out_with_its_captions(tmp_path, tiny_weights):
    good, _ = tiny_weights
    full = captions_folder(tmp_path / "full", n=3)
    (full / "2.png").write_bytes(b"\x89PNG garbage")
    ref = captions_folder(tmp_path / "ref", n=2)  # the same first two images and their captions
    for name, folder in (("full", full), ("ref", ref)):
        assert eval_cli("--pretrained", good, "--task", "zeroshot_retrieval", "--dataset", folder,
                        "--output", tmp_path / f"{name}.json", "--recall-k", 1, 2) == 0
    got, want = result(tmp_path / "full.json")["metrics"], result(tmp_path / "ref.json")["metrics"]
    assert got.pop("num_skipped_files") == 1 and want.pop("num_skipped_files") == 0
    assert got == want


def test_all_images_undecodable_is_one_line(tmp_path, capsys):
    for c in CLASSES:
        (tmp_path / "bad" / c).mkdir(parents=True)
        (tmp_path / "bad" / c / "a.png").write_bytes(b"nope")
    assert eval_cli("--dataset", tmp_path / "bad", "--output", tmp_path / "r.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none of the 3 images could be decoded" in err
    assert not (tmp_path / "r.json").exists()


def test_skip_unreadable_loader_reports_reasons():
    class Half(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            if i % 2:
                raise OSError(f"broken {i}")
            return torch.full((2,), float(i)), i

    for workers in (0, 1):  # batches cross from worker processes by pickle
        batches = list(image_loader(Half(), batch_size=2, workers=workers))
        assert [b.skipped for b in batches] == [["broken 1"], ["broken 3"], []]
        assert [b[1].tolist() for b in batches] == [[0], [2], [4]]
    pinned = batches[0].pin_memory() if torch.cuda.is_available() else batches[0]
    assert pinned.skipped == ["broken 1"] and torch.equal(pinned[0], batches[0][0])
    assert list(image_loader(Half(), batch_size=1))[1] == ()  # nothing decodable in that batch


def noise_folder(root, per_class=16, seed=0):
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_linear_probe_without_train_split_refuses_or_splits(tmp_path, tiny_weights, capsys):
    """Before: the probe trained on the test images themselves; pure noise with arbitrary labels scored 77%."""
    good, _ = tiny_weights
    data = noise_folder(tmp_path / "noise")
    out = tmp_path / "lp.json"
    args = ["--pretrained", good, "--task", "linear_probe", "--dataset", data, "--output", out]
    assert eval_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no 'train' split" in err and "--lp-train-fraction" in err
    assert not out.exists()
    assert eval_cli(*args, "--lp-train-fraction", 0.5, "--feature-cache", tmp_path / "fc") == 0
    m = result(out)["metrics"]
    assert (m["lp_train_fraction"], m["lp_num_train"], m["lp_num_test"]) == (0.5, 24, 24)
    assert m["lp_acc1"] < 0.6  # chance is 1/3
    # what training on the test images gives on the same features: the inflated number the refusal prevents
    blob = torch.load(next((tmp_path / "fc").glob("*.pt")), weights_only=True)
    x, y = blob["features"], blob["labels"]
    assert linear_probe((x, y), (x, y), num_classes=3, epochs=100)["lp_acc1"] > 0.9


def test_stratified_split_is_disjoint_seeded_and_keeps_proportions():
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 2 + [3])
    train, test = stratified_split(labels, 0.5, seed=3)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(len(labels)))
    assert [int((labels[train] == c).sum()) for c in range(4)] == [5, 3, 1, 1]  # a single image trains
    assert [int((labels[test] == c).sum()) for c in range(4)] == [5, 3, 1, 0]
    again = stratified_split(labels, 0.5, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert not torch.equal(train, stratified_split(labels, 0.5, seed=4)[0])


def test_linear_probe_batch_size_is_honoured(tmp_path, tiny_weights, monkeypatch):
    """Before: the probe's batch was max(--batch-size, 256), so CLIP_benchmark's 64 could not be set."""
    import evaclip.eval.linear_probe as lp
    seen = []
    real = lp.train_linear
    monkeypatch.setattr(lp, "train_linear", lambda *a, **kw: seen.append(kw["batch_size"]) or real(*a, **kw))
    good, _ = tiny_weights
    image_folder(tmp_path / "lp" / "train", n=2, seed=1)
    image_folder(tmp_path / "lp" / "test", n=1, seed=2)
    assert eval_cli("--pretrained", good, "--task", "linear_probe", "--dataset", tmp_path / "lp", "--output",
                    tmp_path / "r.json", "--batch-size", 5, "--lp-epochs", 1) == 0
    assert seen == [5]
    assert result(tmp_path / "r.json")["metrics"]["batch_size"] == 5


def test_output_checked_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    data = image_folder(tmp_path / "shapes", n=1)
    built = []
    monkeypatch.setattr(evaclip, "create_model", lambda *a, **kw: built.append(1))
    (tmp_path / "target.json").write_text("{}")
    os.symlink(tmp_path / "target.json", tmp_path / "link.json")
    (tmp_path / "a_file").write_text("x")
    cases = {
        str(tmp_path / "link.json"): "symbolic link",
        str(tmp_path / "a_file" / "r.json"): "is a file, not a folder",
        str(tmp_path / "{dataset}_{foo}.json"): "unknown placeholder {foo}",
        str(tmp_path / "{dataset.json"): "not a valid template",
    }
    for output, fragment in cases.items():
        assert eval_cli("--dataset", data, "--output", output, "--overwrite") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    assert "{dataset}" in err and "{pretrained}" in err  # the valid placeholders are named
    assert not built and (tmp_path / "target.json").read_text() == "{}"
    assert os.path.islink(tmp_path / "link.json")


def test_undecodable_video_is_skipped_and_counted(tmp_path, tiny_weights, capsys):
    import av  # noqa: F401  (make test installs PyAV)
    from test_eval_video import write_video
    from eval_helpers import COLORS
    good, _ = tiny_weights
    for name in ("red", "blue"):
        for folder in ("clean", "broken"):
            (tmp_path / folder / name).mkdir(parents=True, exist_ok=True)
            write_video(tmp_path / folder / name / "a.mp4", [COLORS[name]] * 4)
    (tmp_path / "broken" / "red" / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    args = ["--pretrained", good, "--task", "video_classification", "--image-transform", "squash"]
    for folder in ("clean", "broken"):
        assert eval_cli(*args, "--dataset", tmp_path / folder, "--output", tmp_path / f"{folder}.json") == 0
    assert "skipped 1 file(s)" in capsys.readouterr().err
    got, ref = result(tmp_path / "broken_1f.json")["metrics"], result(tmp_path / "clean_1f.json")["metrics"]
    assert got.pop("num_skipped_files") == 1 and ref.pop("num_skipped_files") == 0
    assert got == ref


def test_every_eval_loader_skips_broken_files(tmp_path, toy_model):
    """The training eval hook and the demo score through the runner's zero-shot path, as the CLI does: it
    skips too."""
    from eval_helpers import tiny_transform
    from evaclip.eval.runner import EvalOptions, evaluate_zeroshot_set, load_zeroshot_set
    from evaclip.tokenizer import tokenize
    image_folder(tmp_path / "d", n=2)
    (tmp_path / "d" / "green" / "zz.png").write_bytes(b"broken")
    opts = EvalOptions(batch_size=2, workers=0)
    m = evaluate_zeroshot_set(toy_model, tokenize, load_zeroshot_set(tmp_path / "d", tiny_transform, "d", opts), opts)
    assert m["num_skipped_files"] == 1 and 0 <= m["acc1"] <= 1
