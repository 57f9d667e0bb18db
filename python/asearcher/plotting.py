"""Training curves as pictures: four panels (reward, accuracy, staleness, throughput) against
the step. SVG is written with no dependency; a PNG is added when matplotlib is installed.
Extra horizontal reference lines (e.g. held-out accuracy before and after warm start) can be
drawn on the accuracy panel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from os import PathLike
from pathlib import Path
from typing import Any

# (title, [(label, path in the record, colour)])
PANELS: list[tuple[str, list[tuple[str, tuple[str, ...], str]]]] = [
    ("reward", [("mean reward", ("reward_mean",), "#1f77b4")]),
    (
        "accuracy (training batches)",
        [("F1", ("f1_mean",), "#2ca02c"), ("EM", ("em_mean",), "#98df8a")],
    ),
    (
        "staleness (versions behind)",
        [
            ("mean", ("learner", "staleness_mean"), "#d62728"),
            ("max", ("learner", "staleness_max"), "#ff9896"),
        ],
    ),
    ("throughput (generated tokens/s)", [("tokens/s", ("gen_tokens_per_s",), "#9467bd")]),
]

_W, _H, _PAD = 420, 240, 44


def _value(record: dict[str, Any], path: tuple[str, ...]) -> float | None:
    v: Any = record
    for key in path:
        v = v.get(key) if isinstance(v, dict) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _series(records: Sequence[dict[str, Any]], path: tuple[str, ...]) -> list[tuple[float, float]]:
    out = []
    for r in records:
        v = _value(r, path)
        if v is not None:
            out.append((float(r["step"]), v))
    return out


def _ticks(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 5:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _panel_svg(
    x0: float,
    y0: float,
    title: str,
    lines: list[tuple[str, list[tuple[float, float]], str]],
    refs: list[tuple[str, float, str]],
    bands: Sequence[tuple[str, float, float, str]] = (),
) -> str:
    pts = [p for _, s, _ in lines for p in s] + [(math.nan, v) for _, v, _ in refs]
    pts += [(math.nan, v) for _, lo, hi, _ in bands for v in (lo, hi)]
    xs = [p[0] for p in pts if not math.isnan(p[0])] or [0.0, 1.0]
    ys = [p[1] for p in pts] or [0.0, 1.0]
    xlo, xhi = min(xs), max(max(xs), min(xs) + 1)
    ylo, yhi = min(min(ys), 0.0), max(ys)
    if yhi - ylo < 1e-9:
        yhi = ylo + 1.0
    yhi += 0.05 * (yhi - ylo)
    pw, ph = _W - 2 * _PAD, _H - 2 * _PAD

    def sx(x: float) -> float:
        return x0 + _PAD + (x - xlo) / (xhi - xlo) * pw

    def sy(y: float) -> float:
        return y0 + _PAD + ph - (y - ylo) / (yhi - ylo) * ph

    out = [
        f'<rect x="{x0 + _PAD}" y="{y0 + _PAD}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
        f'<text x="{x0 + _W / 2}" y="{y0 + _PAD - 14}" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<text x="{x0 + _W / 2}" y="{y0 + _H - 8}" text-anchor="middle" font-size="11">step</text>',
    ]
    for t in _ticks(ylo, yhi):
        out.append(
            f'<line x1="{x0 + _PAD - 4}" x2="{x0 + _PAD}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#888"/>'
        )
        out.append(
            f'<text x="{x0 + _PAD - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="10">{t:g}</text>'
        )
    for t in _ticks(xlo, xhi):
        out.append(
            f'<text x="{sx(t):.1f}" y="{y0 + _PAD + ph + 14}" text-anchor="middle" font-size="10">{t:g}</text>'
        )
    legend_y = y0 + _PAD + 12
    for label, lo, hi, colour in bands:
        out.append(
            f'<rect x="{x0 + _PAD}" y="{sy(hi):.1f}" width="{pw}" height="{max(sy(lo) - sy(hi), 1):.1f}" '
            f'fill="{colour}" fill-opacity="0.13"><title>{escape(label)} {lo:.3f}-{hi:.3f}</title></rect>'
        )
        out.append(
            f'<text x="{x0 + _PAD + pw - 4}" y="{sy(hi) - 3:.1f}" text-anchor="end" font-size="9" '
            f'fill="{colour}">{escape(label)} {lo:.3f}-{hi:.3f}</text>'
        )
    for label, value, colour in refs:
        out.append(
            f'<line x1="{x0 + _PAD}" x2="{x0 + _PAD + pw}" y1="{sy(value):.1f}" y2="{sy(value):.1f}" '
            f'stroke="{colour}" stroke-dasharray="5,4"/>'
        )
        out.append(
            f'<text x="{x0 + _PAD + 4}" y="{sy(value) - 3:.1f}" font-size="10" fill="{colour}">'
            f"{escape(label)} {value:.3f}</text>"
        )
    for label, series, colour in lines:
        if series:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in series)
            out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        out.append(
            f'<text x="{x0 + _PAD + pw - 4}" y="{legend_y}" text-anchor="end" font-size="10" fill="{colour}">'
            f"{escape(label)}</text>"
        )
        legend_y += 12
    return "\n".join(out)


_REF_COLOURS = ["#7f7f7f", "#ff7f0e", "#17becf", "#bcbd22"]


def training_svg(
    records: Sequence[dict[str, Any]],
    refs: Sequence[tuple[str, float]] = (),
    title: str = "training",
    bands: Sequence[tuple[str, float, float]] = (),
) -> str:
    """The four panels as one SVG document. ``refs`` are labelled reference lines drawn on the
    accuracy panel (e.g. held-out F1 before and after warm start); ``bands`` shaded ranges
    there, coloured as the ref of the same position (e.g. the benchmark's interval of each)."""
    ref_lines = [
        (label, value, _REF_COLOURS[i % len(_REF_COLOURS)]) for i, (label, value) in enumerate(refs)
    ]
    band_areas = [
        (label, lo, hi, _REF_COLOURS[i % len(_REF_COLOURS)])
        for i, (label, lo, hi) in enumerate(bands)
    ]
    parts = []
    for i, (panel_title, specs) in enumerate(PANELS):
        x0, y0 = (i % 2) * _W, 24 + (i // 2) * _H
        lines = [(label, _series(records, path), colour) for label, path, colour in specs]
        accuracy = i == 1
        parts.append(
            _panel_svg(
                x0,
                y0,
                panel_title,
                lines,
                ref_lines if accuracy else [],
                band_areas if accuracy else [],
            )
        )
    width, height = 2 * _W, 24 + 2 * _H
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="15">{escape(title)}</text>\n'
        + "\n".join(parts)
        + "\n</svg>\n"
    )


def _png(
    records: Sequence[dict[str, Any]],
    refs: Sequence[tuple[str, float]],
    path: Path,
    title: str,
    bands: Sequence[tuple[str, float, float]] = (),
) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for ax, (panel_title, specs) in zip(axes.flat, PANELS, strict=True):
        for label, p, colour in specs:
            s = _series(records, p)
            if s:
                ax.plot([x for x, _ in s], [y for _, y in s], label=label, color=colour)
        if panel_title.startswith("accuracy"):
            for i, (label, value) in enumerate(refs):
                colour = _REF_COLOURS[i % len(_REF_COLOURS)]
                ax.axhline(value, linestyle="--", label=f"{label} {value:.3f}", color=colour)
            for i, (label, lo, hi) in enumerate(bands):
                colour = _REF_COLOURS[i % len(_REF_COLOURS)]
                ax.axhspan(lo, hi, alpha=0.13, color=colour, label=f"{label} {lo:.3f}-{hi:.3f}")
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_training(
    records: Sequence[dict[str, Any]],
    path: str | PathLike[str],
    refs: Sequence[tuple[str, float]] = (),
    title: str = "training",
    bands: Sequence[tuple[str, float, float]] = (),
) -> list[Path]:
    """Writes the curves to ``path`` (``.svg``) and, with matplotlib, a ``.png`` beside it.
    ``refs`` (label, value) and ``bands`` (label, lo, hi) go on the accuracy panel. Returns the
    files written."""
    svg = Path(path).with_suffix(".svg")
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(training_svg(records, refs, title, bands), encoding="utf-8")
    written = [svg]
    png = svg.with_suffix(".png")
    if _png(records, refs, png, title, bands):
        written.append(png)
    return written


__all__ = ["PANELS", "plot_training", "training_svg"]
