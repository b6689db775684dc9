"""Pictures of a study's front: every pair of objectives, the front drawn, dominated trials faded,
infeasible ones crossed, the baselines marked. The same picture twice: interactive HTML (plotly,
self-contained so it opens offline and inside MLflow's artifact view) and PNG (matplotlib)."""
from __future__ import annotations

import textwrap
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

from .objectives import DIRECTIONS
from .pareto import Point

LABELS = {"accuracy": "validation accuracy (%)", "latency_ms": "predicted latency (ms)", "size_kb": "size (KB)",
          "peak_memory_kb": "peak memory (KB)"}
FRONT, DOMINATED, BASELINE = "#d62728", "#7f7f7f", "#1f77b4"


def pairs(objectives: Sequence[str]) -> list[tuple[str, str]]:
    """(x, y) for every pair of objectives; a maximised one goes on y, so "better" is up and left."""
    return [(b, a) if DIRECTIONS[a] == "maximize" else (a, b) for a, b in combinations(objectives, 2)]


def _groups(pts: Sequence[Point], x: str) -> dict[str, list[Point]]:
    return {"front": sorted((p for p in pts if p.pareto), key=lambda p: p.values[x]),
            "dominated": [p for p in pts if p.feasible and not p.pareto],
            "infeasible": [p for p in pts if not p.feasible],
            "baselines": [p for p in pts if p.baseline]}


def _hover(p: Point) -> str:
    shown = ("accuracy", "test_accuracy", "latency_ms", "size_kb", "peak_memory_kb")
    text = "<br>".join(f"{k} {p.values[k]:.4g}" for k in shown if k in p.values)
    return f"trial {p.trial}{' (' + p.baseline + ')' if p.baseline else ''}<br>{text}"


def write_html(pts: Sequence[Point], objectives: Sequence[str], path: Path, title: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    axes = pairs(objectives)
    fig = make_subplots(rows=1, cols=len(axes), horizontal_spacing=0.08)
    styles: dict[str, dict[str, Any]] = {"front": dict(mode="lines+markers" if len(objectives) == 2 else "markers",
                            marker=dict(color=FRONT, size=9), line=dict(shape="hv", color=FRONT)),
              "dominated": dict(mode="markers", marker=dict(color=DOMINATED, size=7), opacity=0.35),
              "infeasible": dict(mode="markers", marker=dict(color=DOMINATED, size=7, symbol="x"), opacity=0.35),
              "baselines": dict(mode="markers+text", marker=dict(color=BASELINE, size=15, symbol="star"),
                                textposition="top center")}
    for col, (x, y) in enumerate(axes, start=1):
        for name, group in _groups(pts, x).items():
            fig.add_trace(go.Scatter(x=[p.values[x] for p in group], y=[p.values[y] for p in group], name=name,
                                     text=[p.baseline for p in group] if name == "baselines" else None,
                                     hovertext=[_hover(p) for p in group], hoverinfo="text",
                                     legendgroup=name, showlegend=col == 1, **styles[name]), row=1, col=col)
        fig.update_xaxes(title_text=LABELS.get(x, x), row=1, col=col)
        fig.update_yaxes(title_text=LABELS.get(y, y), row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", width=max(700, 560 * len(axes)), height=520)
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def write_png(pts: Sequence[Point], objectives: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = pairs(objectives)
    fig, subplots = plt.subplots(1, len(axes), figsize=(6.4 * len(axes), 4.8), squeeze=False)
    for ax, (x, y) in zip(subplots[0], axes):
        g = _groups(pts, x)
        xy = lambda group: ([p.values[x] for p in group], [p.values[y] for p in group])  # noqa: E731
        if len(objectives) == 2:
            ax.step(*xy(g["front"]), where="post", c=FRONT, lw=1.2)
        for name, style in (("dominated", dict(c=DOMINATED, alpha=0.35, s=18)),
                            ("infeasible", dict(c=DOMINATED, alpha=0.35, s=22, marker="x")),
                            ("front", dict(c=FRONT, s=30, zorder=3, label="Pareto front")),
                            ("baselines", dict(c=BASELINE, s=160, marker="*", zorder=4))):
            if g[name]:
                ax.scatter(*xy(g[name]), **{"label": name, **style})
        for p in g["baselines"]:
            ax.annotate(p.baseline, (p.values[x], p.values[y]), textcoords="offset points", xytext=(6, 6))
        ax.set_xlabel(LABELS.get(x, x))
        ax.set_ylabel(LABELS.get(y, y))
        ax.grid(alpha=0.3)
    subplots[0][0].legend(loc="lower right")
    fig.suptitle("\n".join(textwrap.wrap(title, width=int(9 * fig.get_figwidth()))))  # ~9 characters an inch
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
