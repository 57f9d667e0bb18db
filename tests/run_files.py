"""What the training tests share: reading a run's output files, and a small questions file."""

from __future__ import annotations

import json
from pathlib import Path

from asearcher.data import sample_questions_path


def read_jsonl(path: Path) -> list[dict]:
    """Every non-empty line of a jsonl file, parsed."""
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def latest_step(out: Path) -> int:
    """The step of a run's latest complete checkpoint (0: none yet)."""
    try:
        text = (out / "checkpoints" / "latest").read_text().strip()
        return int(text.removeprefix("step-"))
    except (FileNotFoundError, ValueError):
        return 0


def first_questions(directory: Path, n: int) -> Path:
    """``directory/train.jsonl`` with the first ``n`` sample questions."""
    path = directory / "train.jsonl"
    lines = sample_questions_path().read_text(encoding="utf-8").splitlines()[:n]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
