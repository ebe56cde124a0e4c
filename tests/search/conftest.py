"""Fixtures of the search tests: a tiny EVA-CLIP saved as a JSON config + safetensors, and rendered images."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_kit import make_checkpoint, make_images  # noqa: E402


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
