"""VOC2007 as Table 2 scores it: CLIP_benchmark's single-label protocol (one sample per annotated object, the
image cropped to its box), next to the multi-label mAP reading of the same devkit."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from evaclip.errors import ConfigError, DatasetError
from evaclip.eval.datasets import load_classification
from evaclip.eval.features import image_loader
from evaclip.eval.results import table_rows
from evaclip.eval.runner import EvalOptions, evaluate, resolve_dataset
from evaclip.eval.zeroshot import evaluate_zeroshot_classification
from evaclip.tokenizer import tokenize

from eval_helpers import COLORS, ColorCLIP, tiny_transform

GREY = (128, 128, 128)
# Per image: the coloured rectangles drawn (colour, PIL box) and the annotated objects (class, VOC box,
# difficult). Every object box lies 2 px inside a rectangle, so its crop is one solid colour whichever
# way the box is read. Image 2's second object is annotated "blue" on a red patch: the one miss.
IMAGES = {
    "000001": ([("red", (2, 2, 21, 29)), ("blue", (26, 2, 45, 29))],
               [("red", (4, 4, 20, 28), 0), ("blue", (28, 4, 44, 28), 0)]),
    "000002": ([("green", (2, 2, 21, 29)), ("red", (26, 2, 45, 29))],
               [("green", (4, 4, 20, 28), 0), ("blue", (28, 4, 44, 28), 0), ("green", (6, 6, 18, 20), 1)]),
    "000003": ([("blue", (2, 2, 45, 29))],
               [("blue", (4, 4, 44, 28), 0)]),
}
CLASSES = ("red", "green", "blue")  # written in this order; the devkit's order is sorted: blue, green, red


def _xml(objects) -> str:
    parts = ["<annotation><folder>VOC2007</folder><size><width>48</width><height>32</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{int(name == 'blue')}"
                     f"</truncated><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                     f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_devkit(base, images=IMAGES, split="test"):
    """JPEGImages/<id>.jpg, Annotations/<id>.xml and ImageSets/Main/<class>_<split>.txt, whose flags follow
    from the objects as in the devkit: 1 a non-difficult object of the class, 0 only difficult ones, -1 none."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (rects, objects) in images.items():
        image = Image.new("RGB", (48, 32), GREY)
        draw = ImageDraw.Draw(image)
        for colour, box in rects:
            draw.rectangle(box, fill=COLORS[colour])
        image.save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (base / "Annotations" / f"{image_id}.xml").write_text(_xml(objects))
    for c in CLASSES:
        lines = []
        for image_id, (_, objects) in images.items():
            flags = [d for name, _, d in objects if name == c]
            lines.append(f"{image_id} {-1 if not flags else 1 if 0 in flags else 0:2d}")
        (base / "ImageSets" / "Main" / f"{c}_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def test_one_sample_per_object_labelled_by_its_class(tmp_path):
    write_devkit(tmp_path / "VOCdevkit" / "VOC2007")
    data = load_classification(tmp_path, tiny_transform, dataset="voc2007")
    assert data.classnames == ["blue", "green", "red"]
    # 6 objects in image then annotation order; the difficult green object and the truncated blues count too
    assert data.labels == [2, 0, 1, 0, 1, 0]
    assert data.multilabel_targets is None and len(data.dataset) == 6
    # the same devkit read as the multi-label benchmark: one sample per image
    multi = load_classification(tmp_path, tiny_transform, dataset="voc2007_multilabel")
    assert len(multi.dataset) == 3
    assert multi.multilabel_targets.tolist() == [[1, 0, 1], [1, 1, 0], [1, 0, 0]]


def test_the_crop_is_the_box_as_clip_benchmark_passes_it_to_pil(tmp_path):
    """CLIP_benchmark hands the devkit's 1-based inclusive (xmin, ymin, xmax, ymax) to PIL's crop unchanged:
    pixels [ymin, ymax) x [xmin, xmax) of the decoded image, one pixel up and left of the devkit's box."""
    base = write_devkit(tmp_path)
    data = load_classification(tmp_path, lambda im: np.asarray(im.convert("RGB")), dataset="voc2007")
    boxes = [(image_id, box) for image_id, (_, objects) in IMAGES.items() for _, box, _ in objects]
    for i, (image_id, (x0, y0, x1, y1)) in enumerate(boxes):
        decoded = np.asarray(Image.open(base / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        crop, _ = data.dataset[i]
        assert crop.shape == (y1 - y0, x1 - x0, 3)
        assert (crop == decoded[y0:y1, x0:x1]).all()


def test_zero_shot_top1_against_a_hand_count(tmp_path):
    """A model that reads colours gets every crop right but the red patch annotated "blue": top-1 5/6,
    per-class recall blue 2/3, green 2/2, red 1/1."""
    write_devkit(tmp_path)
    data = load_classification(tmp_path, tiny_transform, dataset="voc2007")
    m = evaluate_zeroshot_classification(ColorCLIP(), tokenize, image_loader(data.dataset, 4), data.classnames,
                                         ["a photo of a {c}."])
    assert m["acc1"] == pytest.approx(5 / 6)
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert np.isnan(m["acc5"])  # fewer than 5 classes
    assert "mean_average_precision" not in m


def test_table2_reads_the_single_label_number_only(tmp_path):
    """Through the runner (as `evaclip eval --dataset voc2007`), the result fills Table 2's VOC2007 column;
    the multi-label mAP of the same devkit, recorded as voc2007_multilabel, does not."""
    write_devkit(tmp_path / "VOCdevkit" / "VOC2007")
    opts = EvalOptions(workers=0)
    results = []
    for dataset in ("voc2007", "voc2007_multilabel"):
        name, path = resolve_dataset(dataset, str(tmp_path))
        assert name == dataset and path == tmp_path
        metrics, _ = evaluate(ColorCLIP(), tokenize, "zeroshot_classification", name, path,
                              lambda mode: tiny_transform, ["shortest"], opts)
        results.append({"model": f"m-{dataset}", "pretrained": None, "task": "zeroshot_classification",
                        "dataset": name, "metrics": metrics})
    assert results[0]["metrics"]["acc1"] == pytest.approx(5 / 6)
    assert "acc1" not in results[1]["metrics"] and "mean_average_precision" in results[1]["metrics"]
    header, rows = table_rows(results)["table2_zeroshot_classification"]
    column = header.index("VOC2007")
    assert {row[0]: row[column] for row in rows} == {"m-voc2007": "83.3", "m-voc2007_multilabel": "-"}
    with pytest.raises(ConfigError, match="zero-shot only"):
        evaluate(ColorCLIP(), tokenize, "linear_probe", "voc2007", tmp_path,
                 lambda mode: tiny_transform, ["shortest"], opts)


def _broken(base, what):
    write_devkit(base)
    ann = base / "Annotations" / "000002.xml"
    if what == "no annotations":
        for p in (base / "Annotations").iterdir():
            p.unlink()
        (base / "Annotations").rmdir()
    elif what == "missing xml":
        ann.unlink()
    elif what == "not xml":
        ann.write_text("<annotation><object>")
    elif what == "unknown class":
        ann.write_text(_xml([("dog", (1, 1, 5, 5), 0)]))
    elif what == "empty box":
        ann.write_text(_xml([("red", (9, 4, 9, 20), 0)]))
    elif what == "float box":
        ann.write_text(_xml([("red", (1.5, 1, 5, 5), 0)]))
    elif what == "missing image":
        (base / "JPEGImages" / "000003.jpg").unlink()


@pytest.mark.parametrize("what,message", [
    ("no annotations", r"no Annotations/ folder.*--dataset voc2007_multilabel"),
    ("missing xml", r"cannot read .*000002.xml"),
    ("not xml", r"000002.xml is not a readable VOC annotation"),
    ("unknown class", r"object 1 is a 'dog', which no ImageSets/Main class file names"),
    ("empty box", r"object 1 \(red\) has an empty box"),
    ("float box", r"object 1 \(red\) has no integer bndbox"),
    ("missing image", r"1 of 3 images are missing"),
])
def test_broken_devkits_say_what_is_wrong_in_one_line(tmp_path, what, message):
    _broken(tmp_path, what)
    with pytest.raises(DatasetError, match=message) as err:
        load_classification(tmp_path, tiny_transform, dataset="voc2007")
    assert "\n" not in str(err.value)


def test_other_names_are_refused_naming_both_protocols(tmp_path):
    write_devkit(tmp_path)
    with pytest.raises(DatasetError, match=r"--dataset voc2007 \(Table 2.*--dataset voc2007_multilabel"):
        load_classification(tmp_path, tiny_transform, dataset="cifar10")
    # without a name (a Python caller), the devkit stays the multi-label set it was
    assert load_classification(tmp_path, tiny_transform).multilabel_targets.shape == (3, 3)
    assert torch.equal(load_classification(tmp_path, tiny_transform).multilabel_targets,
                       load_classification(tmp_path, tiny_transform, dataset="voc2007_multilabel").multilabel_targets)
