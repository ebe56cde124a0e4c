"""Fixtures of the search tests: a tiny EVA-CLIP saved as a JSON config + safetensors, and rendered images."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_kit import Server, make_checkpoint, make_images, run_cli  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(config json, checkpoint) of a seeded random evaclip-tiny."""
    return make_checkpoint(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture(scope="session")
def other_tiny(tmp_path_factory):
    """The same architecture with other weights: a model that does not match an index built with `tiny`."""
    return make_checkpoint(tmp_path_factory.mktemp("model_other"), seed=1)


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "photos", 24)


@pytest.fixture(scope="session")
def built(tiny, tmp_path_factory):
    """(folder, photos): 20 images indexed by the `evaclip index` CLI into folder/idx (shared; do not modify)."""
    tmp = tmp_path_factory.mktemp("cli")
    photos = make_images(tmp / "photos", 20)
    config, weights = tiny
    proc = run_cli("index", str(photos), "--model", config, "--pretrained", weights, "--out", str(tmp / "idx"),
                   "--batch-size", "8", "--workers", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedded 20 new images" in proc.stdout and "images/s" in proc.stdout
    return tmp, photos


@pytest.fixture(scope="session")
def server(built):
    """`evaclip serve` of that index on 127.0.0.1, with no model flags (the index records its model)."""
    tmp, photos = built
    with Server(str(tmp / "idx")) as srv:
        srv.photos = photos
        yield srv
