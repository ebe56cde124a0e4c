"""Dataset layouts on disk (real PNG files, real tar shards) and end-to-end zero-shot against numpy."""
import csv
import io
import tarfile

import numpy as np
import pytest
import torch

from evaclip.errors import DatasetError
from evaclip.eval.catalog import default_classnames, imagenet_wnids
from evaclip.eval.datasets import detect_layout, load_classification, load_retrieval
from evaclip.eval.features import image_loader
from evaclip.eval.metrics import classification_metrics
from evaclip.eval.zeroshot import evaluate_zeroshot_classification
from evaclip.tokenizer import tokenize

from eval_helpers import np_zeroshot_logits, shapes, tiny_transform, to_array

CLASSES = ("red", "green", "blue")
TEMPLATES = ["a photo of a {c} shape.", "a {c} thing"]


def write_image_folder(root, n=3):
    samples = shapes(n)
    for i, (label, image) in enumerate(samples):
        (root / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        image.save(root / CLASSES[label] / f"{i}.png")
    return samples


def write_wds(root, samples, split="test", shards=2, retrieval=False):
    (root / split).mkdir(parents=True)
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    for s in range(shards):
        with tarfile.open(root / split / f"{s}.tar", "w") as tar:
            for i, (label, image) in list(enumerate(samples))[s::shards]:
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                payload = ("\n".join(label) if retrieval else str(label)).encode()
                for name, data in ((f"s{i:06d}.png", buf.getvalue()), (f"s{i:06d}.{'txt' if retrieval else 'cls'}", payload)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    if retrieval:
        (root / "dataset_type.txt").write_text("retrieval\n")
    else:
        (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")


def numpy_metrics(model, samples, classnames, templates):
    arrays = np.stack([to_array(img) for _, img in samples])
    logits = np_zeroshot_logits(model, arrays, classnames, templates)
    labels = np.array([y for y, _ in samples])
    return logits, labels


def check_against_numpy(model, data, samples_in_order, classnames, templates):
    loader = image_loader(data.dataset, batch_size=4, workers=0)
    metrics = evaluate_zeroshot_classification(model, tokenize, loader, data.classnames, templates)
    logits, labels = numpy_metrics(model, samples_in_order, classnames, templates)
    ref = classification_metrics(logits, labels)
    assert (logits.argmax(1) == labels).mean() == pytest.approx(ref["acc1"])
    for k in ("acc1", "mean_per_class_recall"):
        assert metrics[k] == pytest.approx(ref[k])
    assert np.isnan(metrics["acc5"])  # 3 classes
    return metrics


def test_image_folder_end_to_end(tmp_path, toy_model):
    samples = write_image_folder(tmp_path)
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES))
    assert detect_layout(tmp_path) == "image_folder"
    data = load_classification(tmp_path, tiny_transform)
    # sorted folder order: blue, green, red
    assert data.classnames == ["blue", "green", "red"] and data.templates == TEMPLATES
    order = {"blue": 0, "green": 1, "red": 2}
    relabelled = sorted(((order[CLASSES[y]], img, i) for i, (y, img) in enumerate(samples)),
                        key=lambda t: (t[0], f"{t[2]}.png"))
    check_against_numpy(toy_model, data, [(y, img) for y, img, _ in relabelled], data.classnames, TEMPLATES)
    # the loader gives the same batches with worker processes
    b0 = next(iter(image_loader(data.dataset, batch_size=9, workers=2)))
    b1 = next(iter(image_loader(data.dataset, batch_size=9, workers=0)))
    assert (b0[0] == b1[0]).all() and (b0[1] == b1[1]).all()


def test_classification_csv_end_to_end(tmp_path, toy_model):
    samples = shapes(2, seed=3)
    (tmp_path / "imgs").mkdir()
    rows = []
    for i, (y, img) in enumerate(samples):
        img.save(tmp_path / "imgs" / f"{i}.jpg", quality=95)
        rows.append((f"imgs/{i}.jpg", y if i % 2 else CLASSES[y]))  # mix indices and names
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *rows])
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSES))
    assert detect_layout(tmp_path) == "classification_csv"
    data = load_classification(tmp_path, tiny_transform)
    assert data.labels == [y for y, _ in samples]
    from PIL import Image
    reread = [(y, Image.open(tmp_path / "imgs" / f"{i}.jpg")) for i, (y, _) in enumerate(samples)]
    check_against_numpy(toy_model, data, reread, list(CLASSES), TEMPLATES)


def test_clip_benchmark_wds_end_to_end(tmp_path, toy_model):
    samples = shapes(3, seed=5)
    write_wds(tmp_path, samples)
    assert detect_layout(tmp_path / "test") == "clip_benchmark_wds"
    data = load_classification(tmp_path, tiny_transform, split="test")
    assert data.layout == "clip_benchmark_wds" and data.templates == TEMPLATES
    in_order = [samples[i] for s in range(2) for i in range(s, len(samples), 2)]
    check_against_numpy(toy_model, data, in_order, list(CLASSES), TEMPLATES)


def test_imagenet_synset_folders(tmp_path):
    wnids = imagenet_wnids()
    samples = shapes(1)
    for (y, img), wnid in zip(samples, ["n01443537", "n01498041", "n12267677"]):
        (tmp_path / wnid).mkdir()
        img.save(tmp_path / wnid / "a.png")
    assert detect_layout(tmp_path) == "imagenet_folders"
    full = load_classification(tmp_path, tiny_transform, dataset="imagenet1k")
    assert len(full.classnames) == 1000
    assert full.labels == [wnids.index("n01443537"), wnids.index("n01498041"), wnids.index("n12267677")]
    sub = load_classification(tmp_path, tiny_transform, dataset="imagenet-r")
    assert len(sub.classnames) == 200
    assert [sub.classnames[y] for y in sub.labels] == ["goldfish", "stingray", "acorn"]
    with pytest.raises(DatasetError, match="not in the imagenet-a class subset"):
        load_classification(tmp_path, tiny_transform, dataset="imagenet-a")  # goldfish is not in A


def test_imagenet_flat_val_with_kaggle_solution_file_and_synset_csv(tmp_path):
    wnids = imagenet_wnids()
    synsets = ["n01443537", "n01498041", "n12267677"]
    val = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    val.mkdir(parents=True)
    rows = []
    for i, ((_, img), wnid) in enumerate(zip(shapes(1), synsets)):
        img.save(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG", format="JPEG")
        rows.append((f"ILSVRC2012_val_{i + 1:08d}", f"{wnid} 10 20 30 40 {wnid} 1 2 3 4"))
    with open(tmp_path / "kaggle" / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "PredictionString"), *rows])
    assert detect_layout(tmp_path / "kaggle") == "imagenet_solution_csv"
    data = load_classification(tmp_path / "kaggle", tiny_transform, dataset="imagenet1k")
    assert len(data.classnames) == 1000 and data.labels == [wnids.index(w) for w in synsets]
    assert [p.name for p, _ in data.dataset.items] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    sub = load_classification(tmp_path / "kaggle", tiny_transform, dataset="imagenet-r")
    assert [sub.classnames[y] for y in sub.labels] == ["goldfish", "stingray", "acorn"]
    # the same flat folder listed in a plain classification CSV with synsets as labels
    with open(val / "val.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *[(f"{r[0]}.JPEG", w) for r, w in zip(rows, synsets)]])
    as_csv = load_classification(val / "val.csv", tiny_transform, dataset="imagenet1k")
    assert as_csv.labels == data.labels and as_csv.classnames == data.classnames
    (val / "templates.txt").write_text("a photo of a {c}.\n")
    assert load_classification(val / "val.csv", tiny_transform).templates == ["a photo of a {c}."]
    # synsets outside ImageNet-1K (e.g. ImageNet-21k) stay plain class names, as before
    with open(val / "other.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), (f"{rows[0][0]}.JPEG", "n99999999")])
    assert load_classification(val / "other.csv", tiny_transform).classnames == ["n99999999"]
    (tmp_path / "kaggle" / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001\n")
    with pytest.raises(DatasetError, match=r"LOC_val_solution.csv:2: the row has fewer than the 2 columns"):
        load_classification(tmp_path / "kaggle", tiny_transform)
    with open(tmp_path / "kaggle" / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "PredictionString"), *rows])
    (val / "ILSVRC2012_val_00000002.JPEG").unlink()
    with pytest.raises(DatasetError, match="1 of 3 images are missing"):
        load_classification(tmp_path / "kaggle", tiny_transform)


def test_known_benchmark_folder_names_map_to_shipped_names(tmp_path):
    samples = shapes(1)
    for name, img in zip(["truck", "airplane", "frog"], [s[1] for s in samples]):
        (tmp_path / name).mkdir()
        img.save(tmp_path / name / "a.png")
    data = load_classification(tmp_path, tiny_transform, dataset="cifar10")
    assert data.classnames == default_classnames("cifar10")
    assert [data.classnames[y] for y in data.labels] == ["airplane", "frog", "truck"]


def test_captions_csv_and_wds_retrieval(tmp_path):
    samples = shapes(1)
    (tmp_path / "c").mkdir()
    rows = [("image", "caption")]
    for i, (_, img) in enumerate(samples):
        img.save(tmp_path / "c" / f"{i}.png")
        rows += [(f"{i}.png", f"caption {i} a"), (f"{i}.png", f"caption {i} b")]
    with open(tmp_path / "c" / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    data = load_retrieval(tmp_path / "c", tiny_transform)
    assert data.layout == "captions_csv" and data.text_to_image == [0, 0, 1, 1, 2, 2]
    assert len(data.dataset) == 3 and data.captions[3] == "caption 1 b"
    write_wds(tmp_path / "w", [(["x a", "x b", "x c"], samples[0][1]), (["y a"], samples[1][1])],
              shards=1, retrieval=True)
    data = load_retrieval(tmp_path / "w", tiny_transform)
    assert data.text_to_image == [0, 0, 0, 1] and data.captions == ["x a", "x b", "x c", "y a"]


def test_missing_and_malformed_datasets_name_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; expected a folder of class folders"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no dataset found.*nshards.txt"):
        detect_layout(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,whatever\nx,y\n")
    with pytest.raises(DatasetError, match="header image,label"):
        detect_layout(bad)
    (tmp_path / "wds" / "test").mkdir(parents=True)
    (tmp_path / "wds" / "test" / "nshards.txt").write_text("2\n")
    (tmp_path / "wds" / "classnames.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match=r"0.tar is missing"):
        load_classification(tmp_path / "wds", tiny_transform)
    folder = tmp_path / "folder"
    write_image_folder(folder, n=1)
    (folder / "classnames.txt").write_text("only one\n")
    with pytest.raises(DatasetError, match="1 names but there are 3 class folders"):
        load_classification(folder, tiny_transform)
    (folder / "classnames.txt").unlink()
    (folder / "red" / "0.png").write_bytes(b"not a png")
    data = load_classification(folder, tiny_transform)
    with pytest.raises(DatasetError, match="cannot read image"):
        [data.dataset[i] for i in range(len(data.dataset))]


def test_objectnet_layout(tmp_path):
    import json
    base = tmp_path / "objectnet-1.0"
    (base / "mappings").mkdir(parents=True)
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "zz_unmapped": "Unmapped thing"}))
    (base / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))
    for i, (folder, (_, img)) in enumerate(zip(["banana", "zz_unmapped", "alarm_clock"], shapes(1))):
        (base / "images" / folder).mkdir(parents=True)
        img.save(base / "images" / folder / f"{i}.png")
    assert detect_layout(tmp_path) == "objectnet"
    data = load_classification(tmp_path, tiny_transform, dataset="objectnet")
    assert data.classnames == ["alarm clock", "banana"]
    assert sorted(data.labels) == [0, 1] and len(data.dataset) == 2  # the unmapped folder is left out


def test_a_model_that_knows_colours_is_always_right_on_every_layout(tmp_path):
    """Label / class-name alignment: any mix-up between folder order, CSV labels, shard order and the class
    names would cost accuracy here."""
    from eval_helpers import ColorCLIP
    model = ColorCLIP()
    write_image_folder(tmp_path / "folder", n=3)
    samples = shapes(3, seed=9)
    write_wds(tmp_path / "wds", samples, shards=2)
    (tmp_path / "csv").mkdir()
    rows = [("image", "label")]
    for i, (y, img) in enumerate(samples):
        img.save(tmp_path / "csv" / f"{i}.png")
        rows.append((f"{i}.png", CLASSES[y] if i % 2 else y))
    with open(tmp_path / "csv" / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (tmp_path / "csv" / "classnames.txt").write_text("\n".join(CLASSES))
    for root in ("folder", "wds", "csv"):
        data = load_classification(tmp_path / root, tiny_transform)
        m = evaluate_zeroshot_classification(model, tokenize, image_loader(data.dataset, 4), data.classnames,
                                             ["a {c} shape"])
        assert m["acc1"] == 1.0 and m["mean_per_class_recall"] == 1.0, root
    # and a wrong class-name order is caught: the same data with the names reversed scores worse
    data = load_classification(tmp_path / "folder", tiny_transform)
    m = evaluate_zeroshot_classification(model, tokenize, image_loader(data.dataset, 4), data.classnames[::-1],
                                         ["a {c} shape"])
    assert m["acc1"] < 0.5


def write_voc(root, samples, extra_positive=(), difficult=(), split="test"):
    """A VOC2007 devkit folder: JPEGImages/<id>.jpg and ImageSets/Main/<class>_test.txt (1 / -1 / 0 flags).
    ``extra_positive`` / ``difficult``: (sample index, class index) pairs flagged 1 / 0 besides the own class."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for i, (_, image) in enumerate(samples):
        image.save(root / "JPEGImages" / f"{i:06d}.jpg", quality=95)
    for c, name in enumerate(CLASSES):
        lines = []
        for i, (y, _) in enumerate(samples):
            flag = 0 if (i, c) in difficult else 1 if y == c or (i, c) in extra_positive else -1
            lines.append(f"{i:06d} {flag:2d}")
        (root / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")


def test_voc_devkit_is_multilabel_with_difficult_flagged(tmp_path, toy_model):
    from PIL import Image
    from evaclip.eval.metrics import multilabel_metrics
    samples = shapes(3, seed=7)
    root = tmp_path / "VOCdevkit" / "VOC2007"
    write_voc(root, samples, extra_positive={(0, 1), (4, 2)}, difficult={(1, 2), (7, 0)})
    assert detect_layout(tmp_path) == detect_layout(root) == "voc_devkit"
    data = load_classification(tmp_path, tiny_transform)
    assert data.classnames == sorted(CLASSES)  # not VOC's 20 names: the devkit's own, sorted
    expected = np.full((len(samples), 3), 0)
    for i, (y, _) in enumerate(samples):
        expected[i, data.classnames.index(CLASSES[y])] = 1
    expected[0, data.classnames.index("green")] = expected[4, data.classnames.index("blue")] = 1
    expected[1, data.classnames.index("blue")] = expected[7, data.classnames.index("red")] = -1
    assert (data.multilabel_targets.numpy() == expected).all()
    loader = image_loader(data.dataset, batch_size=4, workers=0)
    metrics = evaluate_zeroshot_classification(toy_model, tokenize, loader, data.classnames, TEMPLATES)
    reread = [(y, Image.open(root / "JPEGImages" / f"{i:06d}.jpg")) for i, (y, _) in enumerate(samples)]
    logits, _ = numpy_metrics(toy_model, reread, data.classnames, TEMPLATES)
    ref = multilabel_metrics(torch.tensor(logits), torch.tensor(expected))
    assert {"mean_average_precision", "mean_average_precision_voc07"} <= set(metrics)
    for k in ("mean_average_precision", "mean_average_precision_voc07"):
        assert metrics[k] == pytest.approx(ref[k], abs=1e-5)


def test_voc_devkit_with_the_twenty_classes_keeps_the_devkit_order(tmp_path):
    shipped = default_classnames("voc2007_multilabel")
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (tmp_path / "JPEGImages").mkdir()
    shapes(1)[0][1].save(tmp_path / "JPEGImages" / "000001.jpg")
    for name in shipped:
        (main / f"{name}_test.txt").write_text(f"000001 {1 if name == 'sofa' else -1}\n")
    data = load_classification(tmp_path, tiny_transform, dataset="voc2007_multilabel")
    assert data.classnames == sorted(shipped) == shipped  # the devkit's order, which CLIP_benchmark ships
    assert data.multilabel_targets[0].tolist() == [1 if n == "sofa" else 0 for n in sorted(shipped)]
    with pytest.raises(DatasetError, match="--dataset voc2007_multilabel"):
        load_classification(tmp_path, tiny_transform, dataset="pets")  # voc2007 is the single-label protocol


def test_broken_voc_devkits_say_what_is_wrong(tmp_path):
    samples = shapes(1)
    write_voc(tmp_path / "a", samples)
    with pytest.raises(DatasetError, match="no <class>_val.txt"):
        load_classification(tmp_path / "a", tiny_transform, split="val")
    (tmp_path / "a" / "ImageSets" / "Main" / "red_test.txt").write_text("000000 1\n000001 maybe\n")
    with pytest.raises(DatasetError, match=r"red_test.txt:2: expected"):
        load_classification(tmp_path / "a", tiny_transform)
    write_voc(tmp_path / "b", samples)
    (tmp_path / "b" / "ImageSets" / "Main" / "red_test.txt").write_text("000000 1\n")
    with pytest.raises(DatasetError, match="other images"):
        load_classification(tmp_path / "b", tiny_transform)
    write_voc(tmp_path / "c", samples)
    (tmp_path / "c" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DatasetError, match="1 of 3 images are missing"):
        load_classification(tmp_path / "c", tiny_transform)


# --- the class list comes from the class folders (CLIP_benchmark / ImageFolder), never from "folders with files"

FOUR = ("red", "green", "blue", "yellow")


def write_split(root, n=4, empty=(), missing=(), seed=0):
    """ROOT/<colour>/<i>.png for the four colours; ``empty`` folders exist without images, ``missing`` not at all."""
    for label, image in shapes(n, classes=FOUR, seed=seed):
        name = FOUR[label]
        if name in missing:
            continue
        (root / name).mkdir(parents=True, exist_ok=True)
        if name not in empty:
            image.save(root / name / f"{seed}_{len(list((root / name).iterdir()))}.png")


def test_an_empty_class_folder_keeps_every_later_label(tmp_path):
    write_split(tmp_path / "train", seed=1)
    write_split(tmp_path / "test", empty=("green",), seed=2)
    train = load_classification(tmp_path, tiny_transform, split="train")
    test = load_classification(tmp_path, tiny_transform, split="test")
    assert test.classnames == train.classnames == sorted(FOUR)  # blue, green, red, yellow: green kept
    for data in (train, test):
        assert [data.classnames[y] for y in data.labels] == [p.parent.name for p, _ in data.dataset.items]


def test_linear_probe_scores_with_an_empty_test_folder_and_refuses_mismatched_splits(tmp_path):
    from evaclip.eval.runner import EvalOptions, run_task
    from eval_helpers import ColorCLIP

    write_split(tmp_path / "a" / "train", n=6, seed=1)
    write_split(tmp_path / "a" / "test", n=4, empty=("green",), seed=2)
    opts = EvalOptions(workers=0, batch_size=8)
    metrics = run_task(ColorCLIP(), tokenize, "linear_probe", None, tmp_path / "a", tiny_transform, opts)
    assert metrics["lp_acc1"] >= 0.9  # labels shifted past the empty folder scored ~1/3 here
    write_split(tmp_path / "b" / "train", n=2, seed=1)
    write_split(tmp_path / "b" / "test", n=2, missing=("yellow",), seed=2)
    with pytest.raises(DatasetError, match=r"splits have different class lists \(train has \['yellow'\] that test"):
        run_task(ColorCLIP(), tokenize, "linear_probe", None, tmp_path / "b", tiny_transform, opts)


def test_caltech101_folders_as_distributed_get_clip_benchmarks_names(tmp_path):
    # 101_ObjectCategories names its folders BACKGROUND_Google, Faces, Faces_easy, ..., car_side, ...; CLIP_benchmark
    # labels them in that sorted order with its own names ("background", "off-center face", ...).
    samples = shapes(1)
    for folder, (_, image) in zip(["Faces", "BACKGROUND_Google", "car_side"], samples):
        (tmp_path / folder).mkdir()
        image.save(tmp_path / folder / "image_0001.png")
    data = load_classification(tmp_path, tiny_transform, dataset="caltech101")
    assert data.classnames == default_classnames("caltech101") and len(data.classnames) == 102
    assert [data.classnames[y] for y in data.labels] == ["background", "off-center face", "side of a car"]


def test_long_csv_captions_are_read_and_runaway_fields_refused(tmp_path, monkeypatch):
    import evaclip.eval.datasets as D

    shapes(1)[0][1].save(tmp_path / "a.png")
    long_caption = "a red shape " * 20_000  # 240 KB: over csv's default 128 KB field limit
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"], ["a.png", long_caption], ["a.png", "short"]])
    limit = csv.field_size_limit()
    data = load_retrieval(tmp_path, tiny_transform)
    assert data.captions == [long_caption, "short"] and csv.field_size_limit() == limit  # caller's limit restored
    monkeypatch.setattr(D, "CSV_FIELD_LIMIT", 1 << 20)
    with open(tmp_path / "captions.csv", "a", newline="") as f:
        csv.writer(f).writerow(["a.png", "x" * (2 << 20)])
    with pytest.raises(DatasetError, match=r"captions.csv:4: not a readable CSV row .*at most 1 MiB"):
        load_retrieval(tmp_path, tiny_transform)


def test_a_templates_or_classnames_file_of_blank_lines_is_refused(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "templates.txt").write_text("\n  \n\n")
    with pytest.raises(DatasetError, match="templates.txt has no entries .*remove the file to use the defaults"):
        load_classification(tmp_path, tiny_transform)
    (tmp_path / "templates.txt").unlink()
    (tmp_path / "classnames.txt").write_text("\n")
    with pytest.raises(DatasetError, match="classnames.txt has no entries"):
        load_classification(tmp_path, tiny_transform)


def test_palette_png_with_a_transparent_colour_is_preprocessed_as_the_reference(tmp_path):
    from PIL import Image

    from evaclip.transforms import image_transform

    image = Image.new("P", (8, 8), 0)
    image.putpalette([200, 30, 30, 30, 30, 200] + [0] * 762)
    for x in range(4):
        for y in range(8):
            image.putpixel((x, y), 1)
    (tmp_path / "red").mkdir()
    image.save(tmp_path / "red" / "p.png", transparency=0)  # the red half is the transparent colour
    reference = image_transform(8, False)  # the reference's convert("RGB"): the red stays red
    data = load_classification(tmp_path, reference)
    expected = reference(Image.open(tmp_path / "red" / "p.png").convert("RGB"))
    assert torch.equal(data.dataset[0][0], expected)
    white = load_classification(tmp_path, image_transform(8, False, transparency="white")).dataset[0][0]
    assert not torch.equal(white, expected)  # compositing is there, when asked for
