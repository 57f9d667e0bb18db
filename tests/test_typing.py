"""The typed surface: the generated stub of ``asearcher._core`` is fresh and matches the
compiled module (stubtest), the package, the examples and these tests type-check (mypy), and
every native export is either wrapped by the facade or deliberately private."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from asearcher import _core

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "python" / "asearcher"

#: Native exports the facade does not wrap, each with the reason.
PRIVATE = {
    "config_schema": "read by scripts/gen_config.py to generate asearcher.config",
}

pytest.importorskip("mypy")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_stub_is_generated_from_the_module_and_fresh():
    gen = _script("gen_stubs")
    assert gen.STUB.read_text() == gen.generated(), "run python scripts/gen_stubs.py"
    stub = gen.STUB.read_text()
    assert '"""A retrieved passage."""' in stub  # docstrings come from the Rust doc comments


def test_stubtest_finds_the_stub_and_the_module_agree(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "asearcher._core"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the installed package, not the sources
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean_on_the_package_the_examples_and_the_config_tests(tmp_path):
    targets = ["asearcher", str(REPO / "examples"), str(REPO / "tests" / "test_config.py")]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), *targets],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_native_export_is_wrapped_or_deliberately_private():
    sources = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    exports = [n for n in dir(_core) if not n.startswith("__")]
    unwrapped = [
        n
        for n in exports
        if n not in PRIVATE
        and not re.search(rf"(_core\.{n}\b|from \._core import[^\n]*\b{n}\b)", sources)
    ]
    assert not unwrapped, f"native exports with no facade: {unwrapped} (wrap them or list them)"
    assert set(PRIVATE) <= set(exports), "PRIVATE lists names the module no longer has"
