"""Tests for sora_jax.data.prepare on user mistakes, odd captions, progress and being killed."""

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from sora_jax.cli import main
from sora_jax.data.clip_store import ClipStore
from sora_jax.data.isolated_pool import IsolatedPool
from sora_jax.data.prepare import prepare
from sora_jax.data.source_list import MAX_CAPTION_CHARS
from sora_jax.data.video_io import write_video
from sora_jax.errors import ConfigError

_SETTINGS = {"max_seconds": 2.0, "fps": 8.0, "max_area": 64 * 64}


def _video(path, caption: str | bytes | None = "a red ball", frames: int = 8) -> None:
    """A small flat-gray mp4 with a sidecar caption (``bytes`` are written as they are)."""
    write_video(path, np.full((frames, 32, 32, 3), 100, np.uint8), 8.0)
    if isinstance(caption, bytes):
        path.with_suffix(".txt").write_bytes(caption)
    elif caption is not None:
        path.with_suffix(".txt").write_text(caption)


def _refused(capsys, *args: str) -> str:
    """Runs ``sora-jax prepare ARGS`` in this process; returns its one stderr line."""
    code = main(["prepare", *map(str, args)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("sora-jax prepare: ")
    return lines[0]


# -- CSV --------------------------------------------------------------------------------------------

_OPEN_QUOTES = {
    # The next row's own quotes end up in the middle of the field.
    "closed later": 'path,text\na.mp4,"a red ball\nb.mp4,"a blue cube"\n',
    # Swallows every following row up to the end of the file.
    "never closed": 'path,text\na.mp4,"a red ball\nb.mp4,a blue cube\nc.mp4,a green cone\n',
    # A quote at the end of a later caption closes the field cleanly: only the content tells.
    "closed at a line end": 'path,text\na.mp4,"a red ball\nb.mp4,a blue cube\nc.mp4,a green cone"\n',
}


@pytest.mark.parametrize("text", _OPEN_QUOTES.values(), ids=_OPEN_QUOTES.keys())
def test_csv_quote_left_open_is_refused_naming_where_it_opened(tmp_path, capsys, text):
    (tmp_path / "data.csv").write_text(text)
    line = _refused(capsys, "--input", tmp_path / "data.csv", "--output", tmp_path / "store")
    assert "data.csv" in line and "line 2" in line and "quote" in line
    assert not (tmp_path / "store").exists()  # Refused before anything was written.


def test_csv_caption_over_several_lines_is_kept_whole(tmp_path):
    _video(tmp_path / "a.mp4", caption=None)
    _video(tmp_path / "b.mp4", caption=None)
    caption = "a red ball\nrolls, then stops"  # Its second line is no row: no video path in it.
    (tmp_path / "data.csv").write_text(f'path,text\na.mp4,"{caption}"\nb.mp4,"a blue cube"\n')
    report = prepare(tmp_path / "data.csv", tmp_path / "store", workers=0, progress=False, **_SETTINGS)
    assert (report.sources_done, report.failures) == (2, {})
    store = ClipStore.open(tmp_path / "store")
    assert {r.source: r.caption for r in store.records} == {"a.mp4": caption, "b.mp4": "a blue cube"}


def test_csv_caption_with_an_unquoted_comma_is_refused(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("path,text\na.mp4,a red ball\nb.mp4,a blue, round cube\n")
    line = _refused(capsys, "--input", tmp_path / "data.csv", "--output", tmp_path / "store")
    assert "data.csv line 3" in line and "3 fields" in line and "quote" in line


def test_csv_without_a_path_column_names_the_columns(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("file,caption\na.mp4,a red ball\n")
    line = _refused(capsys, "--input", tmp_path / "data.csv", "--output", tmp_path / "store")
    assert "data.csv" in line and "'file', 'caption'" in line and "path" in line and "text" in line


def test_csv_not_utf8_names_the_byte(tmp_path, capsys):
    text = "path,text\na.mp4,a red ball\nb.mp4,une boule "
    (tmp_path / "data.csv").write_bytes(text.encode() + b"\xe9t\xe9\n")  # Latin-1 "été".
    line = _refused(capsys, "--input", tmp_path / "data.csv", "--output", tmp_path / "store")
    assert "data.csv" in line and f"byte {len(text.encode())}" in line and "line 3" in line


# -- input, output and flags ----------------------------------------------------------------------


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    _video(tmp_path / "in" / "a.mp4")
    (tmp_path / "store").write_text("not a store")
    line = _refused(capsys, "--input", tmp_path / "in", "--output", tmp_path / "store")
    assert "store" in line and "is a file" in line and "data/" not in line


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="no /sys: not Linux")
def test_output_where_nobody_may_write_is_refused_before_anything_is_written(tmp_path, capsys):
    # Creating entries under /sys fails even for root, which passes every permission bit.
    _video(tmp_path / "in" / "a.mp4")
    line = _refused(capsys, "--input", tmp_path / "in", "--output", "/sys/sora_prepare_out/store")
    assert "/sys/sora_prepare_out/store" in line and "not writable" in line and "'/sys'" in line
    assert not os.path.exists("/sys/sora_prepare_out")


def test_store_made_read_only_is_refused_on_resume(tmp_path, capsys):
    # A store's own subfolders are checked too, which a path under /sys cannot show: it holds none.
    _video(tmp_path / "in" / "a.mp4")
    _video(tmp_path / "in" / "b.mp4")
    out = tmp_path / "store"
    prepare(tmp_path / "in" / "a.mp4", out, workers=0, progress=False, **_SETTINGS)
    (out / "index").chmod(0o555)
    try:
        try:
            os.rmdir(tempfile.mkdtemp(dir=out / "index"))
        except PermissionError:
            pass
        else:
            pytest.skip("this user writes into folders whose permission bits say read-only (root)")
        flags = ["--max-seconds", "2", "--fps", "8", "--max-area", "4096"]  # The store's own settings.
        line = _refused(capsys, "--input", tmp_path / "in", "--output", out, *flags)
    finally:
        (out / "index").chmod(0o755)
    assert "not writable" in line and "index" in line
    assert ClipStore.open(out).sources_done() == {"a.mp4"}


def test_missing_input_is_refused(tmp_path, capsys):
    line = _refused(capsys, "--input", tmp_path / "nowhere", "--output", tmp_path / "store")
    assert "nowhere" in line and "does not exist" in line


def test_folder_of_other_files_as_output_is_refused(tmp_path, capsys):
    _video(tmp_path / "in" / "a.mp4")
    line = _refused(capsys, "--input", tmp_path / "in", "--output", tmp_path / "in")
    assert "not a clip store" in line


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--max-seconds", "-1"),
        ("--max-seconds", "0"),
        ("--max-seconds", "nan"),
        ("--fps", "-8"),
        ("--max-area", "0"),
        ("--min-side", "0"),
        ("--workers", "0"),
        ("--workers", "-2"),
        ("--caption-tokens", "0"),
    ],
)
def test_non_positive_numbers_are_refused_by_flag(tmp_path, capsys, flag, value):
    line = _refused(capsys, "--input", tmp_path, "--output", tmp_path / "store", flag, value)
    assert flag in line and value in line


def test_a_single_video_file_is_one_source(tmp_path):
    _video(tmp_path / "in" / "a.mp4", caption="a red ball")
    _video(tmp_path / "in" / "b.mp4")  # Beside it, not asked for.
    report = prepare(tmp_path / "in" / "a.mp4", tmp_path / "store", workers=0, progress=False, **_SETTINGS)
    assert (report.inputs_seen, report.sources_done, report.failures) == (1, 1, {})
    store = ClipStore.open(tmp_path / "store")
    assert [(r.clip_id, r.caption) for r in store.records] == [("a.mp4#0", "a red ball")]


# -- settings of a resumed store --------------------------------------------------------------------


def test_rerun_with_other_settings_is_refused_naming_each(tmp_path, capsys):
    _video(tmp_path / "in" / "a.mp4")
    out = tmp_path / "store"
    prepare(tmp_path / "in", out, workers=0, progress=False, **_SETTINGS)
    line = _refused(
        capsys,
        "--input",
        tmp_path / "in",
        "--output",
        out,
        "--max-seconds",
        "2",
        "--fps",
        "4",
        "--max-area",
        "1024",
    )
    assert "--fps 8 -> 4" in line and "--max-area 4096 -> 1024" in line and "--output" in line
    assert "--max-seconds" not in line  # Unchanged.
    with pytest.raises(ConfigError, match=r"--fps 8 -> 0"):
        prepare(tmp_path / "in", out, workers=0, progress=False, **{**_SETTINGS, "fps": None})
    again = prepare(tmp_path / "in", out, workers=0, progress=False, **_SETTINGS)
    assert (again.skipped_done, again.sources_done) == (1, 0)  # The same settings resume.


# -- captions ---------------------------------------------------------------------------------------


def test_caption_not_utf8_is_counted_and_named(tmp_path, caplog):
    _video(tmp_path / "in" / "a.mp4", caption=b"une boule rouge \xe9t\xe9")
    _video(tmp_path / "in" / "b.mp4", caption="a blue cube")
    with caplog.at_level(logging.WARNING):
        report = prepare(tmp_path / "in", tmp_path / "store", workers=0, progress=False, **_SETTINGS)
    assert report.caption_changes == {"not_utf8": 1}
    assert [c["path"] for c in report.captions_changed] == ["a.mp4"]
    assert any("a.mp4" in r.getMessage() and "UTF-8" in r.getMessage() for r in caplog.records)
    assert ClipStore.open(tmp_path / "store").record("a.mp4#0").caption == "une boule rouge \ufffdt\ufffd"


def test_long_caption_is_cut_and_counted(tmp_path):
    _video(tmp_path / "in" / "a.mp4", caption="a red ball " * 10_000)  # 110 KB.
    report = prepare(tmp_path / "in", tmp_path / "store", workers=0, progress=False, **_SETTINGS)
    assert report.caption_changes == {"cut": 1}
    caption = ClipStore.open(tmp_path / "store").record("a.mp4#0").caption
    assert caption.startswith("a red ball a red ball") and len(caption) <= MAX_CAPTION_CHARS


# -- progress, scratch, commits ---------------------------------------------------------------------


def test_progress_shows_sources_and_clips_on_stderr(tmp_path, capsys):
    _video(tmp_path / "in" / "a.mp4")
    _video(tmp_path / "in" / "b.mp4", frames=24)  # 3 s: two clips.
    prepare(tmp_path / "in", tmp_path / "store", workers=0, **_SETTINGS)
    err = capsys.readouterr().err
    assert "2/2 sources" in err and "3 clips" in err


def test_scratch_of_processes_that_are_gone_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = tmp_path / "tmp" / f"sora_prepare_{int(gone.stdout)}_x1"
    live = tmp_path / "tmp" / f"sora_prepare_{os.getppid()}_x2"  # Our parent runs, so its scratch stays.
    for folder in (stale, live):
        (folder / "0").mkdir(parents=True)
        np.save(folder / "0" / "000000.npy", np.zeros(10))
    _video(tmp_path / "in" / "a.mp4")
    prepare(tmp_path / "in", tmp_path / "store", workers=0, progress=False, **_SETTINGS)
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [live.name]


def test_pool_ticks_while_a_task_runs():
    pool = IsolatedPool(1, timeout=None)
    try:
        events = list(pool.run([("sleep", time.sleep, (1.5,))], tick=0.2))
    finally:
        pool.close()
    assert events[-1] == ("sleep", True, None)
    assert len(events) >= 4 and set(events[:-1]) == {None}


def _segments(store) -> int:
    return len(list((store / "index").glob("*.jsonl"))) if (store / "index").is_dir() else 0


def _wait_for_segments(proc, store, more_than: int) -> None:
    deadline = time.monotonic() + 180
    while _segments(store) <= more_than:
        assert proc.poll() is None, "prepare ended before committing anything"
        assert time.monotonic() < deadline, "no commit within 180 s"
        time.sleep(0.005)


def test_killed_run_keeps_its_commits_and_a_rerun_resumes(tmp_path, monkeypatch):
    n = 12
    for i in range(n):
        _video(tmp_path / "in" / f"v{i:02d}.mp4", caption=f"video {i}", frames=24)
    expected = {f"v{i:02d}.mp4#{k}" for i in range(n) for k in range(2)}  # 3 s: clips of 2 s and 1 s.
    scratch, out = tmp_path / "tmp", tmp_path / "store"
    scratch.mkdir()
    command = [sys.executable, "-m", "sora_jax.cli", "prepare", "--input", str(tmp_path / "in")]
    command += ["--output", str(out), "--workers", "1", "--max-seconds", "2", "--max-area", "4096"]

    def start(log):
        return subprocess.Popen(command, env={**os.environ, "TMPDIR": str(scratch)}, stdout=log, stderr=log)

    # SIGKILL right after the first commit: what was committed stays, whole sources only.
    with open(tmp_path / "killed.log", "w") as log:
        killed = start(log)
        try:
            _wait_for_segments(killed, out, 0)
        finally:
            killed.kill()
            killed.wait()
    store = ClipStore.open(out)
    done = store.sources_done()
    assert 0 < len(done) < n
    assert {r.source for r in store.records} == done
    assert {r.clip_id for r in store.records} == {c for c in expected if c.split("#")[0] in done}
    assert list(scratch.glob(f"sora_prepare_{killed.pid}_*"))  # Left behind by the kill.

    # SIGTERM: the run stops, commits what it decoded, and removes its scratch and the stale one.
    with open(tmp_path / "stopped.log", "w") as log:
        stopped = start(log)
        try:
            _wait_for_segments(stopped, out, _segments(out))
        finally:
            stopped.send_signal(signal.SIGTERM)
            code = stopped.wait(120)
    assert code == 128 + signal.SIGTERM, (tmp_path / "stopped.log").read_text()[-3000:]
    assert list(scratch.iterdir()) == []
    assert len(ClipStore.open(out).sources_done()) > len(done)

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    report = prepare(tmp_path / "in", out, workers=0, progress=False, **_SETTINGS)
    assert report.skipped_done + report.sources_done == n and report.failures == {}
    records = ClipStore.open(out).records  # Opening checks that no clip id repeats.
    assert {r.clip_id for r in records} == expected and len(records) == len(expected)
