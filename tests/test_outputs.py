"""The one home of output-file rules: checked before work, atomic, regular files only, normal permissions."""
import os
import stat

import pytest

from evaclip.errors import EvaclipError
from evaclip.outputs import atomic_write_text, check_output


def test_non_regular_targets_are_refused_even_with_overwrite(tmp_path):
    (tmp_path / "real").write_text("keep")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name, kind in [("link", "symbolic link"), ("fifo", "FIFO"), ("dir", "folder")]:
        with pytest.raises(EvaclipError, match=kind):
            check_output(tmp_path / name, overwrite=True)
    assert (tmp_path / "real").read_text() == "keep"


def test_existing_file_needs_overwrite_and_parent_must_be_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(EvaclipError, match="--overwrite"):
        check_output(tmp_path / "f")
    assert check_output(tmp_path / "f", overwrite=True) == tmp_path / "f"
    with pytest.raises(EvaclipError, match="is a file, not a folder"):
        check_output(tmp_path / "f" / "sub" / "out.json")
    with pytest.raises(EvaclipError, match="empty path"):
        check_output("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_found_before_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(EvaclipError, match="not writable"):
        check_output(ro / "a" / "out.json")


def test_atomic_write_gives_plain_permissions_and_leaves_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "sub" / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
    assert os.listdir(tmp_path / "sub") == ["r.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    from evaclip.outputs import atomic_write
    target = tmp_path / "r.json"
    target.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]
