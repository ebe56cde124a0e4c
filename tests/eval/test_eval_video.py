"""Video decoding with PyAV on a real file written in the test, and zero-shot video classification."""
import numpy as np
import pytest

from eval_helpers import COLORS, np_normalize, tiny_transform, to_array
from evaclip.errors import DatasetError
from evaclip.eval.video import decode_frames, evaluate_video_classification, frame_indices, load_video_folder
from evaclip.tokenizer import tokenize

av = pytest.importorskip("av")  # evaclip.eval.video imports PyAV only when it decodes


def write_video(path, colors, size=32):
    """One frame per entry of ``colors`` (lossless-enough solid colours with the frame number as a bar)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "1"}
        for i, col in enumerate(colors):
            a = np.zeros((size, size, 3), np.uint8)
            a[:] = col
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_frame_indices():
    assert frame_indices(12, 1) == [6]
    assert frame_indices(12, 4) == [1, 4, 7, 10]
    assert frame_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]  # int((i + 0.5) * 3 / 8)
    assert frame_indices(0, 2) == []


def test_decode_middle_and_uniform_frames(tmp_path):
    grey = [(20 * i, 20 * i, 20 * i) for i in range(12)]
    write_video(tmp_path / "v.mp4", grey)
    mid = decode_frames(tmp_path / "v.mp4", 1)
    assert len(mid) == 1 and abs(int(np.asarray(mid[0])[16, 16, 0]) - 120) <= 6
    four = decode_frames(tmp_path / "v.mp4", 4)
    assert [abs(int(np.asarray(f)[16, 16, 0]) - 20 * i) <= 6 for f, i in zip(four, [1, 4, 7, 10])] == [True] * 4
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(DatasetError, match="cannot decode"):
        decode_frames(tmp_path / "bad.mp4")


def test_video_zero_shot_matches_numpy(tmp_path, toy_model):
    names = ["red", "green", "blue"]
    for ci, name in enumerate(names):
        (tmp_path / name).mkdir()
        for j in range(2):
            cols = [COLORS[name] if (t + j) % 3 else COLORS[names[(ci + 1) % 3]] for t in range(9)]
            write_video(tmp_path / name / f"v{j}.mp4", cols)
    templates = ["a video of {c}", "{c} color"]
    ds, classnames = load_video_folder(tmp_path, tiny_transform, num_frames=3)
    assert classnames == ["blue", "green", "red"] and len(ds) == 6
    m = evaluate_video_classification(toy_model, tokenize, ds, classnames, templates, dataset_name="kinetics400",
                                      batch_size=4)
    # numpy reference: decode the same frames, average normalised frame features, zero-shot logits
    feats, labels = [], []
    for path, y in ds.items:
        frames = np.stack([to_array(f) for f in decode_frames(path, 3)])
        feats.append(np_normalize(toy_model.np_image(frames)).mean(0))
        labels.append(y)
    head = np_normalize(np.stack([np_normalize(toy_model.np_text([t.replace("{c}", c) for t in templates])).mean(0)
                                  for c in classnames]))
    logits = 100 * np_normalize(np.stack(feats)) @ head.T
    acc1 = float((logits.argmax(1) == np.array(labels)).mean())
    assert m["acc1"] == pytest.approx(acc1)
    assert np.isnan(m["acc5"]) and np.isnan(m["score"])  # 3 classes: no top-5, so no Kinetics score
    ucf = evaluate_video_classification(toy_model, tokenize, ds, classnames, templates, dataset_name="ucf101")
    assert ucf["score"] == pytest.approx(acc1)


def test_colour_model_classifies_videos_by_averaged_frames(tmp_path):
    """Each video is 2/3 its class colour, 1/3 another; averaging all 9 frames must still find the class."""
    from eval_helpers import ColorCLIP
    names = ["red", "green", "blue"]
    for ci, name in enumerate(names):
        (tmp_path / name).mkdir()
        cols = [COLORS[names[(ci + 1) % 3]] if t % 3 == 0 else COLORS[name] for t in range(9)]
        write_video(tmp_path / name / "v.mp4", cols)
    ds, classnames = load_video_folder(tmp_path, tiny_transform, num_frames=9)
    m = evaluate_video_classification(ColorCLIP(), tokenize, ds, classnames, ["{c}"], dataset_name="ucf101")
    assert m["acc1"] == 1.0
    one = evaluate_video_classification(ColorCLIP(), tokenize, load_video_folder(tmp_path, tiny_transform, num_frames=1)[0],
                                        classnames, ["{c}"])
    assert one["acc1"] == 1.0  # the middle frame (index 4) has the class colour


def test_empty_class_folder_keeps_its_label(tmp_path):
    # Only the listing is checked (no decoding), so placeholder files are enough.
    for name, n in (("ant", 2), ("bee", 0), ("cat", 1)):
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.mp4").write_bytes(b"")
    data, classnames = load_video_folder(tmp_path, transform=None)
    assert classnames[:3] == ["ant", "bee", "cat"]
    assert [label for _, label in data.items] == [0, 0, 2]


def test_a_video_folder_s_own_classnames_and_templates_are_used(tmp_path):
    for folder in ("arrow_down", "zoom_in"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "0.mp4").write_bytes(b"")
    (tmp_path / "classnames.txt").write_text("arrow pointing down\nmagnifier with a plus\n")
    (tmp_path / "templates.txt").write_text("an animated {c} icon.\n")
    data, classnames = load_video_folder(tmp_path, transform=None)
    assert classnames == ["arrow pointing down", "magnifier with a plus"]
    assert data.templates == ["an animated {c} icon."] and [label for _, label in data.items] == [0, 1]
    (tmp_path / "templates.txt").unlink()
    assert load_video_folder(tmp_path, transform=None)[0].templates is None  # the benchmark's defaults then
