"""Shard URL expansion and the streaming tar reader, on real tar files."""
from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from data_kit import image_bytes, sample_members, write_tar

from evaclip.data.shards import expand_braces, expand_urls, open_url
from evaclip.data.tario import TarSampleReader, split_member_name
from evaclip.errors import DatasetError


def test_brace_ranges_keep_zero_padding():
    assert expand_braces("s-{000..003}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"]
    assert expand_braces("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}/{0..1}") == ["a/0", "a/1", "b/0", "b/1"]
    assert expand_braces("x{p,q{1..2}}y") == ["xpy", "xq1y", "xq2y"]  # nested
    assert len(expand_braces("/d/{00000..23295}.tar")) == 23296


def test_expand_urls_joins_semicolon_lists_and_lists():
    assert expand_urls("a{0..1}.tar; b.tar;") == ["a0.tar", "a1.tar", "b.tar"]
    assert expand_urls(["s3://b/x{1..2}.tar", "c.tar"]) == ["s3://b/x1.tar", "s3://b/x2.tar", "c.tar"]


@pytest.mark.parametrize("bad", ["a{0..2.tar", "a}0.tar", " ; "])
def test_bad_patterns_raise_clear_error(bad):
    with pytest.raises(DatasetError):
        expand_urls(bad)


def test_member_names_split_like_webdataset():
    assert split_member_name("dir/000123.jpg") == ("dir/000123", "jpg")
    assert split_member_name("000123.seg.PNG") == ("000123", "seg.png")
    assert split_member_name("README") is None
    assert split_member_name("dir/._hidden") is None


def _shard(tmp_path, n=5):
    members = []
    for i in range(n):
        members += sample_members(f"{i:04d}", i)
        members.append((f"{i:04d}.json", b'{"caption": "json %d"}' % i))
    return write_tar(tmp_path / "s.tar", members), members


def test_reader_groups_members_by_key(tmp_path):
    path, members = _shard(tmp_path)
    reader = TarSampleReader(str(path))
    samples = list(reader)
    assert reader.error is None
    assert [s["__key__"] for s in samples] == [f"{i:04d}" for i in range(5)]
    for i, s in enumerate(samples):
        assert set(s) == {"__key__", "__url__", "png", "txt", "json"}
        assert s["png"] == image_bytes(i)
        assert s["txt"] == f"caption {i:04d}".encode()


def test_reader_skip_resumes_inside_a_shard(tmp_path):
    path, _ = _shard(tmp_path)
    full = list(TarSampleReader(str(path)))
    assert list(TarSampleReader(str(path), skip=3)) == full[3:]


def test_non_adjacent_members_of_one_key_are_two_samples(tmp_path):
    path = write_tar(tmp_path / "t.tar", [("a.jpg", b"1"), ("b.jpg", b"2"), ("a.txt", b"3")])
    assert [sorted(s) for s in TarSampleReader(str(path))] == [
        ["__key__", "__url__", "jpg"], ["__key__", "__url__", "jpg"], ["__key__", "__url__", "txt"]]


def _strip_url(samples):
    return [{k: v for k, v in s.items() if k != "__url__"} for s in samples]


@pytest.mark.parametrize("cut", [0.3, 0.55, 0.9, 0.999])
def test_truncated_tar_keeps_the_complete_samples_and_reports(tmp_path, cut):
    path, _ = _shard(tmp_path, n=6)
    full = _strip_url(TarSampleReader(str(path)))
    raw = path.read_bytes()
    with tarfile.open(path) as tf:
        last = tf.getmembers()[-1]
        data_end = last.offset_data + last.size
    end = int(data_end * cut)
    # Cut inside the data, not at a block boundary, or exactly at one (then the end marker is missing).
    for stop in (end, end - end % 512):
        bad = tmp_path / f"cut{stop}.tar"
        bad.write_bytes(raw[:stop])
        reader = TarSampleReader(str(bad))
        got = _strip_url(reader)
        assert reader.error == "truncated_tar"
        assert len(got) < len(full)
        assert got == full[:len(got)]  # a prefix: nothing garbled


def test_gzipped_tar_and_missing_file(tmp_path):
    path, _ = _shard(tmp_path, n=3)
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert list(TarSampleReader(str(gz))) == [dict(s, __url__=str(gz)) for s in TarSampleReader(str(path))]
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    reader = TarSampleReader(str(cut))
    list(reader)
    assert reader.error == "truncated_tar"
    missing = TarSampleReader(str(tmp_path / "nope.tar"))
    assert list(missing) == [] and missing.error == "unreadable_shard"


def test_oversized_member_is_marked_not_read(tmp_path):
    path = write_tar(tmp_path / "big.tar", [("a.jpg", b"x" * 5000), ("a.txt", b"cap"), ("b.txt", b"ok")])
    samples = list(TarSampleReader(str(path), max_member_bytes=1000))
    assert samples[0]["__skip__"] == "oversized_member" and "jpg" not in samples[0]
    assert samples[1]["txt"] == b"ok"


def test_fsspec_urls_are_streamed(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    path, _ = _shard(tmp_path, n=2)
    with fsspec.open("memory://bucket/s-0.tar", "wb") as f:
        f.write(path.read_bytes())
    url = expand_urls("memory://bucket/s-{0..0}.tar")[0]
    with open_url(url) as f:
        assert tarfile.open(fileobj=io.BytesIO(f.read())).getnames()[0] == "0000.png"
    assert [s["__key__"] for s in TarSampleReader(url)] == ["0000", "0001"]
    assert [s["__key__"] for s in TarSampleReader("file://" + str(path))] == ["0000", "0001"]


def test_patterns_are_counted_before_they_are_expanded(monkeypatch):
    import evaclip.data.shards as shards
    from evaclip.data.shards import count_names

    assert count_names("x{p,q{1..2}}y{0..9}") == len(expand_braces("x{p,q{1..2}}y{0..9}")) == 30
    assert count_names("/x/{00000000..99999999}.tar") == 10**8
    # Refused before any name is built: expansion itself must not run.
    monkeypatch.setattr(shards, "_expand", lambda p: pytest.fail("expanded a pattern over the cap"))
    for spec in ["/x/{00000000..99999999}.tar", ["a{0..999999}.tar", "b{0..9}.tar"], "a{0..999}/{0..9999}"]:
        with pytest.raises(DatasetError, match="more than the 1,000,000") as e:
            expand_urls(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match="100,000,000 shards"):
        expand_braces("/x/{00000000..99999999}.tar")


def test_the_cap_itself_is_accepted():
    from evaclip.data.shards import MAX_SHARDS

    urls = expand_urls(f"s{{1..{MAX_SHARDS}}}.tar")
    assert len(urls) == MAX_SHARDS and urls[-1] == f"s{MAX_SHARDS}.tar"


def _awkward_shard(path):
    """Duplicate members, an oversized one after which a small duplicate follows, a key that comes back later,
    sub-folders, a member without an extension, and a folder entry."""
    members = [("0000.jpg", image_bytes(0)), ("0000.txt", b"first"), ("0000.txt", b"duplicate"),
               ("0001.jpg", b"x" * 5000), ("0001.jpg", b"small"), ("0001.txt", b"one"),
               ("README", b"no extension"), ("sub/0002.seg.png", image_bytes(2)), ("sub/0002.txt", b"two"),
               ("0000.json", b"{}"), ("0003.txt", b"three")]
    write_tar(path, members)
    with tarfile.open(path, "a") as tf:
        info = tarfile.TarInfo("a_folder")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    return path


@pytest.mark.parametrize("skip,stride,limit", [(0, 1, 1 << 20), (0, 2, 1 << 20), (1, 3, 1 << 20), (2, 1, 1000),
                                               (0, 4, 1000), (7, 1, 1 << 20)])
def test_later_readers_seek_with_the_first_reads_layout_and_yield_the_same(tmp_path, monkeypatch, skip, stride, limit):
    from evaclip.data import tario
    path = str(_awkward_shard(tmp_path / "s.tar"))
    tario._LAYOUTS.clear()
    streamed = list(TarSampleReader(path, skip=skip, stride=stride, max_member_bytes=limit))  # no layout yet
    tario._LAYOUTS.clear()
    list(TarSampleReader(path))
    assert path not in tario._LAYOUTS  # a whole-shard reader is not followed by others: no layout kept
    list(TarSampleReader(path, stride=2))
    assert path in tario._LAYOUTS  # a full, clean stride read left one

    def no_stream(url):
        raise AssertionError("a reader with a layout must not stream the shard again")
    monkeypatch.setattr(tario, "open_url", no_stream)
    reader = TarSampleReader(path, skip=skip, stride=stride, max_member_bytes=limit)
    assert list(reader) == streamed and reader.error is None and reader.samples == 5


def test_a_changed_or_damaged_shard_is_streamed_again(tmp_path):
    from evaclip.data import tario
    path = tmp_path / "s.tar"
    write_tar(path, sample_members("a", 0) + sample_members("b", 1))
    assert [s["__key__"] for s in TarSampleReader(str(path), stride=2)] == ["a"]
    assert str(path) in tario._LAYOUTS
    write_tar(path, sample_members("c", 2) + sample_members("d", 3) + sample_members("e", 4))  # rewritten
    assert [s["__key__"] for s in TarSampleReader(str(path), stride=2)] == ["c", "e"]
    cut = tmp_path / "cut.tar"
    with tarfile.open(path) as tf:
        last = tf.getmembers()[-1]
    cut.write_bytes(path.read_bytes()[:last.offset_data + 1])  # inside the last member
    for _ in range(2):  # a damaged shard leaves no layout: every read reports the damage
        reader = TarSampleReader(str(cut), stride=2)
        assert len(list(reader)) < 2 and reader.error == "truncated_tar"
    assert str(cut) not in tario._LAYOUTS
