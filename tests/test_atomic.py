"""Directories written whole, never deleting what the toolkit did not write
(recsys_ebm/atomic.py): replacement, refusal, interrupted swaps, concurrent writers, stale
staging, on real directories and real processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys_ebm import atomic
from recsys_ebm.atomic import MARKER, atomic_directory, exclusive, recover
from recsys_ebm.errors import ConcurrentWriteError, DataError


def _ours(path: Path) -> bool:
    return (path / "ours.txt").is_file()


def _write(target: Path, text: str) -> None:
    with atomic_directory(target, _ours) as staging:
        (staging / "ours.txt").write_text(text)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_replaces_its_own_directory_whole(tmp_path):
    target = tmp_path / "model"
    _write(target, "old")
    (target / "extra.txt").write_text("from the old save")
    _write(target, "new")
    assert sorted(p.name for p in target.iterdir()) == ["ours.txt"]
    assert (target / "ours.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_never_deletes_a_directory_it_did_not_write(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_renameat2", lambda *args: False)
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("important")
    with pytest.raises(DataError, match="victim.*not a directory this toolkit wrote"):
        _write(victim, "model")
    assert (victim / "notes.txt").read_text() == "important" and (victim / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_an_existing_file_is_an_error_and_untouched(tmp_path):
    path = tmp_path / "model"
    path.write_text("a file")
    with pytest.raises(DataError, match="not a directory"):
        _write(path, "model")
    assert path.read_text() == "a file"
    assert not list(tmp_path.glob(".model.old*")) and not list(tmp_path.glob(".model.staging*"))


def test_an_empty_directory_may_be_filled(tmp_path):
    (tmp_path / "model").mkdir()
    _write(tmp_path / "model", "x")
    assert (tmp_path / "model" / "ours.txt").read_text() == "x"


def test_an_error_inside_leaves_the_previous_directory(tmp_path):
    target = tmp_path / "model"
    _write(target, "previous")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target, _ours) as staging:
        (staging / "ours.txt").write_text("half")
        raise KeyboardInterrupt
    assert (target / "ours.txt").read_text() == "previous"
    assert not list(tmp_path.glob(".model.staging*"))


def test_a_swap_interrupted_between_the_renames_is_recovered(tmp_path):
    target = tmp_path / "model"
    _write(target, "previous")
    old = tmp_path / f".model.old-{_dead_pid()}-abcdefgh"
    (target / MARKER).write_text(str(_dead_pid()))
    os.rename(target, old)  # the state a kill between the two renames leaves
    recover(target, _ours)
    assert (target / "ours.txt").read_text() == "previous" and not old.exists()
    assert not (target / MARKER).exists()


def test_stale_staging_of_dead_writers_is_removed_and_nothing_else(tmp_path):
    target = tmp_path / "model"
    stale = tmp_path / f".model.staging-{_dead_pid()}-xyz12345"
    stale.mkdir()
    (stale / MARKER).write_text(str(_dead_pid()))
    unmarked = tmp_path / ".model.staging-1-notours1"
    unmarked.mkdir()
    alive = tmp_path / f".model.staging-{os.getppid()}-alive123"
    alive.mkdir()
    (alive / MARKER).write_text(str(os.getppid()))  # a writer that is still running
    _write(target, "new")
    assert not stale.exists() and unmarked.is_dir() and alive.is_dir()


def test_a_second_writer_gets_a_clear_error(tmp_path):
    target = tmp_path / "model"
    with exclusive(target), pytest.raises(ConcurrentWriteError, match="being written by another process"):
        _write(target, "x")
    _write(target, "after")  # the lock is released with the holder
    assert (target / "ours.txt").read_text() == "after"


def _hammer(target: str, tag: str, rounds: int, queue, start) -> None:
    start.wait(timeout=60)  # both write at the same time
    wins = losses = 0
    for i in range(rounds):
        try:
            _write(Path(target), f"{tag}-{i}")
            wins += 1
        except ConcurrentWriteError:
            losses += 1
    queue.put((wins, losses))


def test_two_processes_saving_hard_end_with_one_complete_directory(tmp_path):
    target = tmp_path / "model"
    context = multiprocessing.get_context("spawn")
    queue, start = context.Queue(), context.Barrier(2)
    workers = [context.Process(target=_hammer, args=(str(target), tag, 150, queue, start))
               for tag in "ab"]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # every save either lands whole or is refused with the clear error: no ENOTEMPTY,
    # FileNotFoundError or any other failure (a worker would exit non-zero), ever
    assert sum(wins + losses for wins, losses in results) == 300
    assert sum(wins for wins, _ in results) >= 1 and sum(losses for _, losses in results) >= 1
    assert (target / "ours.txt").read_text().split("-")[0] in "ab"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


_KILL_WRITER = """
import sys, time
from pathlib import Path
from recsys_ebm.atomic import atomic_directory
target = Path(sys.argv[1])
i = 0
while True:
    with atomic_directory(target, lambda p: (p / "ours.txt").is_file()) as staging:
        for n in range(20):
            (staging / f"part{n}.bin").write_bytes(b"x" * 50_000)
        (staging / "ours.txt").write_text(str(i))
    i += 1
"""


def test_killed_writers_leave_the_old_or_the_new_directory(tmp_path):
    target = tmp_path / "model"
    _write(target, "first")
    for kill in range(20):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_WRITER, str(target)])
        time.sleep(0.15 + 0.02 * kill)  # spread the kill points over the writes
        proc.kill()
        proc.wait()
        recover(target, _ours)
        assert (target / "ours.txt").is_file(), f"no complete directory after kill {kill}"
        written = sorted(p.name for p in target.iterdir() if p.name != MARKER)
        assert written in (["ours.txt"], ["ours.txt", *sorted(f"part{n}.bin" for n in range(20))])
    _write(target, "after")  # the next run succeeds and removes what the killed ones left
    assert (target / "ours.txt").read_text() == "after"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
