"""Interrupted runs leave nothing behind: onnxq's temporary files are recognisable
(``.<target>.onnxq-<pid>-<hex>.tmp``, locked by their writer), SIGTERM unwinds like Ctrl-C,
and a run after a SIGKILL removes the killed run's files, and only those."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from graph_factory import tiny_decoder
from onnxq import tempfiles
from onnxq.modelio import ModelWriter, load_model

HERE = os.path.dirname(os.path.abspath(__file__))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _onnxq_temps(folder) -> list:
    return sorted(n for n in os.listdir(folder) if tempfiles.STALE_PATTERN.match(n))


def test_writer_temp_names_follow_the_pattern(tmp_path):
    out = tmp_path / "m.onnx"
    with ModelWriter(out, external_data=True) as writer:
        names = _onnxq_temps(tmp_path)
        assert len(names) == 2, names
        assert {n.split(".onnxq-")[0] for n in names} == {".m.onnx", ".m.onnx.data"}
        assert all(f".onnxq-{os.getpid()}-" in n for n in names)
        writer.tensor_proto("w", np.ones(4096, np.float32))
        model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
        writer.write(model)
    assert _onnxq_temps(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]


def test_remove_stale_deletes_only_dead_writers_files(tmp_path):
    dead = _dead_pid()
    stale = [f".model.onnx.onnxq-{dead}-0123abcd.tmp", f".model.onnx.data.onnxq-{dead}-deadbeef.tmp",
             f".model.onnx.onnxq-{dead}-0123abcd.tmp.data"]  # an intermediate model's external data
    live_parent = f".other.onnx.onnxq-{os.getppid()}-00000000.tmp"  # pid alive: kept
    mine = f".mine.onnx.onnxq-{os.getpid()}-11111111.tmp"  # this process: kept
    foreign = [
        f".model.onnx.{dead}.tmp",  # not onnxq's pattern
        f"model.onnx.onnxq-{dead}-0123abcd.tmp",  # no leading dot
        f".model.onnx.onnxq-{dead}-0123abcd.tmp.bak",
        f".model.onnx.onnxq-{dead}-XYZ.tmp",
        f".model.onnx.onnxq-{dead}-0123abcd.tmp.data.bak",
        "notes.txt",
    ]
    for name in stale + [live_parent, mine] + foreign:
        (tmp_path / name).write_bytes(b"x")
    removed = tempfiles.remove_stale(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted([live_parent, mine] + foreign)


def test_remove_stale_keeps_a_file_locked_by_a_live_process(tmp_path):
    """A pid this process cannot see (another container sharing the folder) looks dead:
    the writer's lock keeps its file."""
    name = f".m.onnx.onnxq-{_dead_pid()}-abcdef01.tmp"
    path = tmp_path / name
    path.write_bytes(b"partial")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(path)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert tempfiles.remove_stale(str(tmp_path)) == []
        assert path.exists()
    finally:
        holder.kill()
        holder.wait()
    assert tempfiles.remove_stale(str(tmp_path)) == [str(path)]


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    """A small decoder with external data, for the run after the interrupted one."""
    path = tmp_path_factory.mktemp("small") / "s.onnx"
    onnx.save(tiny_decoder(), str(path), save_as_external_data=True, location="s.onnx.data", size_threshold=0)
    return path


@pytest.fixture(scope="module")
def slow_input(tmp_path_factory):
    """A ~45 MB decoder with external data: quantizing it with one thread takes about a
    second, long enough to kill the run while its temporary files exist."""
    folder = tmp_path_factory.mktemp("input")
    path = folder / "m.onnx"
    model = tiny_decoder(vocab=4096, hidden=512, ffn=1536, layers=3)
    onnx.save(model, str(path), save_as_external_data=True, location="m.onnx.data")
    return path


def _start_quantize(src, out):
    return subprocess.Popen(
        [sys.executable, "-m", "onnxq", "quantize", str(src), "-o", str(out), "--type", "q6_k", "--threads", "1", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_temps(proc, folder, count=2, timeout=60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = _onnxq_temps(folder)
        if len(names) >= count:
            return names
        if proc.poll() is not None:
            pytest.fail(f"quantize ended before writing (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail("quantize never created its temporary files")


def _second_run_cleans(src, out, folder):
    """Any later onnxq run writing into ``folder`` removes the stale files."""
    res = subprocess.run(
        [sys.executable, "-m", "onnxq", "quantize", str(src), "-o", str(out), "--type", "q8_0", "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert _onnxq_temps(folder) == []
    assert sorted(os.listdir(folder)) == ["keep.txt", "q.onnx", "q.onnx.data"]
    assert any(n.op_type == "GgmlMatMul" for n in load_model(out).graph.node)


@pytest.mark.slow
def test_sigkill_leaves_temps_that_the_next_run_removes(slow_input, small_input, tmp_path):
    (tmp_path / "keep.txt").write_text("not onnxq's")
    out = tmp_path / "q.onnx"
    proc = _start_quantize(slow_input, out)
    names = _wait_for_temps(proc, tmp_path)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert _onnxq_temps(tmp_path) == names  # nothing can clean up after SIGKILL ...
    assert not out.exists()
    _second_run_cleans(small_input, out, tmp_path)  # ... but the next run in the folder does


@pytest.mark.slow
def test_sigterm_unwinds_like_ctrl_c(slow_input, small_input, tmp_path):
    (tmp_path / "keep.txt").write_text("not onnxq's")
    out = tmp_path / "q.onnx"
    proc = _start_quantize(slow_input, out)
    _wait_for_temps(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert "onnxq quantize: terminated (SIGTERM)" in proc.stderr.read()
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]  # removed by the run itself
    _second_run_cleans(small_input, out, tmp_path)
