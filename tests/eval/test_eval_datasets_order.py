"""classnames.txt in an order other than the sorted folders: labels follow the names, not the folder order."""
import torch
from PIL import Image

from evaclip.eval.datasets import load_classification


def test_image_folder_labels_follow_classnames_order(tmp_path):
    root = tmp_path / "set"
    names = ["zebra", "apple", "mango"]  # not sorted: as the offline sets write classnames.txt
    colors = {"zebra": (255, 0, 0), "apple": (0, 255, 0), "mango": (0, 0, 255)}
    for name in names[:2]:  # mango has no images: it must stay a candidate class
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), colors[name]).save(root / name / "a.png")
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    data = load_classification(root, transform=lambda im: torch.tensor(im.getpixel((0, 0)), dtype=torch.float))
    assert data.classnames == names
    for image, label in data.dataset:
        assert tuple(int(v) for v in image) == colors[names[label]]
