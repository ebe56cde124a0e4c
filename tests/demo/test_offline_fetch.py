"""The package fetcher: caching, atomic unpacking, error messages, and a real `npm pack` of a local folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaclip_demo.offline.fetch import MARKER, FetchError, _run, cached_version, fetch_npm, fetch_packages
from evaclip_demo.offline.packages import PACKAGES, Package
from evaclip.errors import EvaclipError

PKG_A = Package("pkg-a", "npm", "2.0.0", "MIT", "a", "tests")
PKG_B = Package("pkg-b", "apt", "", "MIT", "b", "tests")


def test_fetch_packages_caches_and_records_versions(tmp_path: Path):
    calls = []

    def fetch(package: Package, dest: Path) -> str:
        calls.append(package.name)
        (dest / "file.txt").write_text(package.name)
        return package.version or "9.9-1"

    (tmp_path / ".tmp-pkg-a-killed").mkdir()  # a fetch killed half-way
    result = fetch_packages([PKG_A, PKG_B], tmp_path, fetch, progress=False)
    assert calls == ["pkg-a", "pkg-b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg-a", "pkg-b"]
    assert result["pkg-b"].version == "9.9-1" and (result["pkg-a"].root / "file.txt").read_text() == "pkg-a"
    fetch_packages([PKG_A, PKG_B], tmp_path, fetch, progress=False)
    assert calls == ["pkg-a", "pkg-b"]  # cached
    # a pinned version that differs from the cached one is fetched again
    newer = Package("pkg-a", "npm", "3.0.0", "MIT", "a", "tests")
    assert cached_version(tmp_path, newer) is None
    fetch_packages([newer], tmp_path, fetch, progress=False)
    assert calls[-1] == "pkg-a" and json.loads((tmp_path / "pkg-a" / MARKER).read_text())["version"] == "3.0.0"


def test_failed_fetch_leaves_nothing_and_names_the_command(tmp_path: Path):
    def fetch(package: Package, dest: Path) -> str:
        (dest / "partial.bin").write_bytes(b"x")
        if package.name == "pkg-b":
            raise FetchError("apt-get download pkg-b", "exit 100: E: Unable to locate package pkg-b")
        return "1"

    with pytest.raises(EvaclipError, match=r"could not fetch 1 package\(s\): pkg-b \(apt: `apt-get download pkg-b` "
                                           r"failed: exit 100: E: Unable to locate package pkg-b\); run `apt-get update`"):
        fetch_packages([PKG_A, PKG_B], tmp_path, fetch, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg-a"]


def test_run_reports_missing_tools_and_exit_codes():
    with pytest.raises(FetchError, match="no-such-tool-xyz is not installed"):
        _run(["no-such-tool-xyz", "download", "x"])
    with pytest.raises(FetchError, match=r"exit 3: boom"):
        _run(["sh", "-c", "echo boom >&2; exit 3"])


def test_package_table_is_pinned_where_it_must_be():
    names = [p.name for p in PACKAGES]
    assert len(set(names)) == len(names) == 9
    assert all(p.version for p in PACKAGES if p.registry == "npm")  # npm versions move: pin them
    assert {p.registry for p in PACKAGES} == {"apt", "npm"}


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_fetch_npm_packs_and_unpacks_a_local_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("npm_config_offline", "true")  # a unit test never talks to the registry
    monkeypatch.setenv("npm_config_update_notifier", "false")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "package.json").write_text(json.dumps({"name": "evaclip-fixture", "version": "1.2.3"}))
    (src / "data" / "x.json").write_text("[1, 2]")
    dest = tmp_path / "dest"
    dest.mkdir()
    # `npm pack <folder>` needs no registry; the spec is the folder path
    version = fetch_npm(Package(str(src), "npm", "", "MIT", "", ""), dest)
    assert version == "1.2.3"
    assert (dest / "package" / "data" / "x.json").read_text() == "[1, 2]"
