"""The shipped class-name and template files against Table 11."""
import pytest

from evaclip.eval import benchmarks as B


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
