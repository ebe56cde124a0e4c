"""Download and unpack registry packages into a cache folder (``apt-get download`` + ``dpkg -x``, ``npm pack``).

Nothing is installed into the system. Each package is unpacked into ``CACHE/<name>/`` through a temporary
folder that is renamed only when the package is complete, and a marker file records the version, so a rerun
skips what it already has and an interrupted fetch leaves nothing that looks complete.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from evaclip_demo.offline.packages import Package
from evaclip.errors import EvaclipError

MARKER = ".evaclip-fetched.json"


class FetchError(Exception):
    """One package could not be fetched: ``command`` is the shell command that failed."""

    def __init__(self, command: str, detail: str):
        super().__init__(f"`{command}` failed: {detail}")
        self.command = command
        self.detail = detail


@dataclass(frozen=True)
class Fetched:
    """An unpacked package: ``root`` holds its files as the archive lays them out."""

    package: Package
    root: Path
    version: str


# A fetch function fills the empty folder ``dest`` with the package's files and returns the exact version.
FetchFn = Callable[[Package, Path], str]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise FetchError(" ".join(cmd), f"{cmd[0]} is not installed") from e
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        raise FetchError(" ".join(cmd), f"exit {done.returncode}: {lines[-1] if lines else 'no output'}")
    return done.stdout


def fetch_apt(package: Package, dest: Path) -> str:
    """``apt-get download`` the .deb into a scratch folder, ``dpkg -x`` it into ``dest``, drop the .deb."""
    spec = f"{package.name}={package.version}" if package.version else package.name
    with tempfile.TemporaryDirectory(prefix="evaclip-deb-") as scratch:
        _run(["apt-get", "download", spec], cwd=Path(scratch))
        debs = sorted(Path(scratch).glob("*.deb"))
        if len(debs) != 1:
            raise FetchError(f"apt-get download {spec}", f"expected one .deb, found {len(debs)}")
        version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"]).strip()
        _run(["dpkg", "-x", str(debs[0]), str(dest)])
    return version


def fetch_npm(package: Package, dest: Path) -> str:
    """``npm pack`` the tarball into a scratch folder and unpack it (safely) into ``dest``."""
    spec = f"{package.name}@{package.version}" if package.version else package.name
    with tempfile.TemporaryDirectory(prefix="evaclip-npm-") as scratch:
        out = _run(["npm", "pack", spec, "--silent", "--pack-destination", scratch], cwd=Path(scratch))
        tgz = Path(scratch) / out.strip().splitlines()[-1].strip()
        if not tgz.is_file():
            raise FetchError(f"npm pack {spec}", f"no tarball {tgz.name} was written")
        with tarfile.open(tgz) as tar:
            tar.extractall(dest, filter="data")  # the "data" filter refuses links and paths outside dest
    meta = json.loads((dest / "package" / "package.json").read_text(encoding="utf-8"))
    return str(meta["version"])


def fetch_from_registry(package: Package, dest: Path) -> str:
    """The real fetch function: apt or npm by ``package.registry``."""
    if package.registry == "apt":
        return fetch_apt(package, dest)
    if package.registry == "npm":
        return fetch_npm(package, dest)
    raise FetchError(package.name, f"unknown registry {package.registry!r}")


def cached_version(cache_dir: Path, package: Package) -> str | None:
    """The version of ``package`` already unpacked in ``cache_dir``, or None when it must be fetched."""
    marker = cache_dir / package.name / MARKER
    if not marker.is_file():
        return None
    version = json.loads(marker.read_text(encoding="utf-8")).get("version")
    if package.version and version != package.version:
        return None
    return version


def fetch_packages(packages: Iterable[Package], cache_dir: Path, fetch_fn: FetchFn = fetch_from_registry,
                   progress: bool = True) -> dict[str, Fetched]:
    """Make every package available unpacked under ``cache_dir``, fetching only those not cached yet.

    All packages are tried; if any failed, one :class:`EvaclipError` names each of them with the command
    that failed, and the cache keeps only the packages that were complete.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(".tmp-*"):  # left by a killed run; never marked complete
        shutil.rmtree(stale, ignore_errors=True)
    packages = list(packages)
    result: dict[str, Fetched] = {}
    failures: list[str] = []
    todo = [p for p in packages if cached_version(cache_dir, p) is None]
    bar = tqdm(todo, desc="fetch packages", unit="pkg", disable=not progress or not todo)
    for package in bar:
        bar.set_postfix_str(package.name)
        final = cache_dir / package.name
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{package.name}-", dir=cache_dir))
        try:
            version = fetch_fn(package, tmp)
            (tmp / MARKER).write_text(json.dumps({"name": package.name, "registry": package.registry,
                                                  "version": version}), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except FetchError as e:
            failures.append(f"{package.name} ({package.registry}: {e})")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        hint = "run `apt-get update` first" if any("apt" in f for f in failures) else "check the npm registry"
        raise EvaclipError(f"could not fetch {len(failures)} package(s): " + "; ".join(failures)
                           + f"; {hint}, then rerun `evaclip data prepare`")
    for package in packages:
        version = cached_version(cache_dir, package)
        result[package.name] = Fetched(package, cache_dir / package.name, str(version))
    return result
