"""Atomic outputs: complete or absent, the mode of an ordinary file, and no leftovers from a killed writer."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from geoplm import atomic, structure


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_the_mode_of_an_ordinary_file(shared_data, tmp_path):
    """Every writer (text, JSON, torch) leaves a file readable by the group and others (0644 under umask 022),
    as ``open()`` would, not the 0600 of the temporary file it was written as."""
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    (tmp_path / "plain.txt").write_text("x")
    records = structure.parse_structure(shared_data / "pdb" / "103l.pdb")
    atomic.write_text(tmp_path / "a.txt", "text")
    atomic.write_json(tmp_path / "a.json", {"a": 1})
    structure.save_shard(records, tmp_path / "records.pt")
    for name in ("a.txt", "a.json", "records.pt"):
        assert _mode(tmp_path / name) == expected == _mode(tmp_path / "plain.txt")
    assert expected & 0o044  # group and others may read


def test_a_failed_block_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(shared_data, tmp_path):
    """SIGKILL while a record shard of a real structure is being written leaves its temporary ``.part`` file;
    the next write of that target removes it (and only that target's)."""
    target = tmp_path / "records.pt"
    other = tmp_path / ".other.pt.abc.part"
    other.write_text("another target's")
    script = textwrap.dedent(
        f"""
        import time
        from geoplm import atomic
        with atomic.atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    leftovers = list(tmp_path.glob(".records.pt.*.part"))
    assert len(leftovers) == 1 and not target.exists()
    time.sleep(0.01)
    structure.save_shard(structure.parse_structure(shared_data / "pdb" / "103l.pdb"), target)
    assert target.exists() and not list(tmp_path.glob(".records.pt.*.part"))
    assert other.exists()
