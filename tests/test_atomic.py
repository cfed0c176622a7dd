"""Atomic writes: the new file whole, or the old one untouched, and no temp file left behind."""

import pytest

from ugafl.common.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def test_success_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert target.read_text() == "new" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_a_writer_that_fails_halfway_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")

    def half(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half, sync_dir=True)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
