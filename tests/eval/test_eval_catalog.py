"""The shipped class-name and template files against Table 11."""
import pytest

from evaclip.eval import catalog as B


def test_all_27_image_benchmarks_have_classnames_and_templates_with_table11_counts():
    assert len(B.IMAGE_CLASSIFICATION) == 27
    for bench in B.IMAGE_CLASSIFICATION:
        names = B.default_classnames(bench.name)
        templates = B.default_templates(bench.name)
        assert templates and all("{c}" in t for t in templates), bench.name
        assert all(isinstance(n, str) and n.strip() for n in names), bench.name
        if bench.name in B.PAPER_COUNT_NOTES:
            continue
        assert len(names) == bench.paper_classes, bench.name


def test_documented_count_differences():
    actual = {n: len(B.default_classnames(n)) for n in B.PAPER_COUNT_NOTES}
    assert actual == {"imagenet-a": 200, "imagenet-r": 200, "objectnet": 1000, "caltech101": 102, "fer2013": 7,
                      "food101": 101}


def test_video_benchmarks_counts():
    for bench in B.VIDEO_CLASSIFICATION:
        names = B.default_classnames(bench.name)
        assert len(names) == len(set(names)) == bench.paper_classes, bench.name
    assert B.default_templates("kinetics400") and B.default_templates("ucf101")


def test_imagenet_subsets_point_at_the_right_classes():
    wnids = B.imagenet_wnids()
    names = B.default_classnames("imagenet1k")
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764" and names[0] == "tench"
    a, r = B.imagenet_subset("imagenet-a"), B.imagenet_subset("imagenet-r")
    assert len(a) == len(set(a)) == 200 and len(r) == len(set(r)) == 200 and a == sorted(a)
    # known members (synset -> name): n01498041 stingray is in both; goldfish n01443537 only in R;
    # n12267677 acorn is the last class of both; the 'junco' n01534433 is in A.
    assert wnids[a[0]] == "n01498041" and names[a[0]] == "stingray"
    assert wnids[r[0]] == "n01443537" and names[r[0]] == "goldfish"
    assert names[a[-1]] == names[r[-1]] == "acorn"
    assert "junco" in B.default_classnames("imagenet-a") and "goldfish" not in B.default_classnames("imagenet-a")
    assert B.default_classnames("imagenet-r")[:2] == ["goldfish", "great white shark"]


def test_names_and_aliases():
    assert B.canonical_name("wds/imagenet1k") == "imagenet1k"
    assert B.canonical_name("ImageNet-1K") == "imagenet1k"
    assert B.default_classnames("objectnet") == B.default_classnames("imagenet1k")
    assert B.default_templates("imagenet-a") == B.default_templates("imagenet1k")
    assert len(B.default_templates("imagenet1k")) == 80
    assert B.default_templates("some_custom_set") == B.default_templates("imagenet1k")
    with pytest.raises(B.ConfigError, match="--classnames"):
        B.default_classnames("some_custom_set")


def test_collections_expand():
    assert B.expand_collections(["table2"]) == [b.name for b in B.IMAGE_CLASSIFICATION]
    assert B.expand_collections(["robustness", "x"]) == B.ROBUSTNESS + ["x"]


def test_class_names_and_order_are_clip_benchmarks():
    # CLIP_benchmark names CIFAR-100 and the VTAB sets by the datasets' own (TFDS / torchvision) label names,
    # SUN397 in ClassName.txt order and VOC2007 in the devkit's sorted order.
    cifar100 = B.default_classnames("cifar100")
    assert [c for c in cifar100 if "_" in c] == ["aquarium_fish", "lawn_mower", "maple_tree", "oak_tree", "palm_tree",
                                                 "pickup_truck", "pine_tree", "sweet_pepper", "willow_tree"]
    resisc = B.default_classnames("vtab/resisc45")
    assert len([c for c in resisc if "_" in c]) == 18 and resisc[2:4] == ["baseball_diamond", "basketball_court"]
    assert resisc[11] == "dense_residential" and resisc[-2] == "thermal_power_station"
    flowers = B.default_classnames("wds/vtab/flowers")
    assert (flowers[15], flowers[59], flowers[92]) == ("globe-flower", "pink-yellow dahlia?", "ball moss")
    assert B.default_classnames("voc2007") == [
        "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
        "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    sun = B.default_classnames("sun397")
    assert sun.index("jail indoor") + 1 == sun.index("jail cell")  # /j/jail/indoor sorts before /j/jail_cell
    assert sun[8:10] == ["apartment building outdoor", "apse indoor"] and len(set(sun)) == 397


def test_caltech101_folder_names_line_up_with_the_class_names():
    folders, names = B.folder_names("caltech101"), B.default_classnames("caltech101")
    assert len(folders) == len(set(folders)) == len(names) == 102 and folders == sorted(folders)
    pairs = dict(zip(folders, names))
    assert pairs["BACKGROUND_Google"] == "background" and pairs["Faces_easy"] == "centered face"
    assert pairs["airplanes"] == "airplane" and pairs["yin_yang"] == "yin and yang symbol"
    assert B.folder_names("cifar10") is None


def test_dataset_names_keep_clip_benchmarks_prefixes():
    assert B.dataset_name("wds/vtab/cifar10") == "wds/vtab/cifar10"
    assert B.dataset_name(" vtab/Flowers102 ") == "vtab/flowers"
    assert B.dataset_name("wds/ImageNet-1K") == "wds/imagenet1k"
    assert B.canonical_name("wds/vtab/cifar10") == "cifar10"


def test_dataset_roots_fill_clip_benchmarks_templates(tmp_path):
    from evaclip.eval.runner import resolve_dataset

    root = str(tmp_path)
    # CLIP_benchmark's cli.py: {dataset} = the name without "wds/", {dataset_cleaned} = that with "/" as "-"
    assert resolve_dataset("wds/vtab/cifar10", root + "/wds_{dataset_cleaned}") == (
        "wds/vtab/cifar10", tmp_path / "wds_vtab-cifar10")
    assert resolve_dataset("vtab/cifar10", root + "/{dataset}") == ("vtab/cifar10", tmp_path / "vtab" / "cifar10")
    (tmp_path / "vtab-pets").mkdir()
    assert resolve_dataset("wds/vtab/pets", root) == ("wds/vtab/pets", tmp_path / "vtab-pets")
    assert resolve_dataset("wds/mnist", root) == ("wds/mnist", tmp_path)


def test_a_dataset_path_is_named_as_clip_benchmark_names_it(tmp_path):
    from evaclip.eval.runner import resolve_dataset

    for folder, name in [("wds_vtab-cifar10", "wds/vtab/cifar10"), ("vtab-pets", "vtab/pets"),
                         ("wds_imagenet1k", "wds/imagenet1k"), ("ImageNet-1K", "imagenet1k"), ("my_set", "my_set")]:
        (tmp_path / folder).mkdir()
        assert resolve_dataset(str(tmp_path / folder), None) == (name, tmp_path / folder)
