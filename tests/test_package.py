"""The package as installed: fresh-interpreter import, typing files, exceptions, logging, CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import asearcher
import pytest
from asearcher import exceptions
from asearcher.testing import emit_test_event


def test_imports_in_a_fresh_interpreter_from_the_installed_wheel():
    code = "import asearcher, asearcher.tools, asearcher.ops; print(asearcher.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "site-packages" in out.stdout, "must import the installed package, not the sources"


def test_native_library_finds_libtorch_by_itself():
    # Load the extension's shared library directly, in a fresh interpreter that never imported
    # torch: the RUNPATH ($ORIGIN/../torch/lib) must resolve libtorch from the installed wheel.
    code = (
        "import ctypes, glob, sys, sysconfig\n"
        "so = glob.glob(sysconfig.get_paths()['platlib'] + '/asearcher/_core*.so')[0]\n"
        "ctypes.CDLL(so)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_typing_files_ship():
    pkg = Path(asearcher.__file__).parent
    assert (pkg / "py.typed").exists()
    stub = (pkg / "_core.pyi").read_text()
    for name in (
        "class LocalSearch",
        "class Toolbox",
        "class RetrievalClient",
        "def serve_retrieval",
    ):
        assert name in stub


def test_exception_hierarchy():
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, exceptions.AsearcherError), name
    assert issubclass(exceptions.CorpusError, ValueError)
    assert issubclass(exceptions.BackendError, ConnectionError)
    assert issubclass(exceptions.ToolTimeoutError, TimeoutError)
    assert issubclass(exceptions.PageRefusedError, PermissionError)


def test_rust_errors_arrive_as_specific_exceptions(tmp_path):
    from asearcher.tools import LocalSearch

    with pytest.raises(exceptions.SearchIndexError, match="not an asearcher index"):
        LocalSearch(tmp_path)
    with pytest.raises(exceptions.ConfigError, match="on_bad_line"):
        LocalSearch.build(tmp_path / "x.jsonl", tmp_path / "o", on_bad_line="maybe")


def test_tracing_events_reach_python_logging(caplog):
    with caplog.at_level(logging.INFO, logger="asearcher"):
        asearcher.set_log_level(logging.INFO)
        emit_test_event("info", "hello from rust")
        emit_test_event("debug", "too detailed")
    msgs = [r.getMessage() for r in caplog.records if r.name == "asearcher"]
    assert any("hello from rust" in m and "source=test" in m for m in msgs), msgs
    assert not any("too detailed" in m for m in msgs)
    asearcher.set_log_level(logging.WARNING)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["demo"],
        ["train"],
        ["eval"],
        ["index"],
        ["index", "build"],
        ["search"],
        ["access"],
        ["fetch"],
        ["serve"],
        ["serve", "retrieval"],
    ],
)
def test_every_subcommand_has_help(args):
    out = subprocess.run(
        [sys.executable, "-m", "asearcher.cli", *args, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "usage: asearcher" in out.stdout


def test_console_script_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "contents": "fine"}\n{"id": 2, \n')
    exe = Path(sys.executable).parent / "asearcher"
    out = subprocess.run(
        [str(exe), "index", "build", str(bad), "--out", str(tmp_path / "idx"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "bad.jsonl:2:" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("kwargs", [{"timeout": 1e30}, {"timeout": 0}, {"timeout": float("nan")}])
def test_absurd_durations_are_config_errors_not_panics(kwargs):
    from asearcher.tools import PageReader, RetrievalClient

    with pytest.raises(exceptions.ConfigError, match="timeout"):
        PageReader(**kwargs)
    with pytest.raises(exceptions.ConfigError, match="backoff"):
        RetrievalClient(["http://127.0.0.1:1"], backoff=1e30)


def test_example_script_runs():
    example = Path(__file__).resolve().parent.parent / "examples" / "search_tools.py"
    out = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        env={**os.environ, "ASEARCHER_PROGRESS": "0"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "replayed: True" in out.stdout and ">>>> Page 1 >>>>" in out.stdout


def test_rollout_and_eval_example_runs(tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "rollout_and_eval.py"
    out = subprocess.run(
        [sys.executable, str(example), "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "ASEARCHER_PROGRESS": "0"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "judge avg@4" in out.stdout and "one_hop" in out.stdout and "two_hop" in out.stdout
    assert (tmp_path / "eval_out" / "results.json").exists()
    assert (tmp_path / "eval_out" / "one_hop" / "trajectories.jsonl").exists()
