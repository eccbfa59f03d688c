"""Figures of the analysis experiments, drawn from result records alone (matplotlib, Agg).

Every function takes records (the dicts the analysis experiments write) and returns a
``matplotlib.figure.Figure`` built without pyplot (no global backend state, no open-figure
registry). :func:`save_png` writes it byte-for-byte reproducibly: fixed size and dpi, matplotlib's
default style, no ``Software`` stamp. :func:`show` displays the same PNG bytes in a notebook.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.style
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
STYLE = "default"  # matplotlib's defaults, whatever the user's matplotlibrc says
PNG_METADATA = {"Software": None}  # no version stamp: the bytes depend on the data only
OUTPUT_COLOR, INPUT_COLOR = "#1f77b4", "#d62728"
DUAL_COLOR, GAIN_FOLDED_COLOR = "#2ca02c", "#9467bd"
DEVIATION_COLOR, GAIN_COLOR, EOF_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c"


def new_figure(width: float, height: float) -> Figure:
    """A Figure of ``width`` × ``height`` inches at :data:`DPI` on an Agg canvas, outside pyplot."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with matplotlib.style.context(STYLE):
        fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (deterministic bytes); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


def show(fig: Figure):
    """Display ``fig`` inline (the PNG that :func:`save_png` writes); a no-op outside IPython."""
    try:  # IPython only exists where a notebook runs: the report itself does not need it
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        return None
    display(Image(data=png_bytes(fig), format="png"))
    return None


# --------------------------------------------------------------------------- SemAlign Fig. 2


# Fig. 2's lines: record key, legend label, colour, marker, line style. The paper's two first;
# the dual and gain-folded decompositions are drawn when the record has them (newer records).
FIDELITY_LINES = (
    ("output_side", "output-side bases, cosine a = S h/‖h‖ (paper)", OUTPUT_COLOR, "o", "-"),
    ("input_side", "input-side bases (embedding rows)", INPUT_COLOR, "s", "-"),
    ("dual", "output-side bases, dual a = pinv(Sᵀ) h/‖h‖", DUAL_COLOR, "^", "--"),
    ("gain_folded", "gain-folded bases (pinv of W diag(g)), cosine", GAIN_FOLDED_COLOR, "D", ":"),
)


def fidelity_figure(record: dict) -> Figure:
    """Per-layer decomposition fidelity, source and target: output-side vs input-side bases, and
    the dual and gain-folded decompositions when the record has them."""
    m = record["metrics"]
    roles = [r for r in ("source", "target") if r in m["models"]]
    with matplotlib.style.context(STYLE):
        fig = new_figure(5.0 * len(roles), 3.8)
        axes = fig.subplots(1, len(roles), squeeze=False)[0]
        for ax, role in zip(axes, roles):
            info = m["models"][role]
            layers = np.arange(1, info["layers"] + 1)
            for key, label, color, marker, style in FIDELITY_LINES:
                if key not in info:
                    continue
                mean = np.asarray(info[key], dtype=float)
                std = np.asarray(info[f"{key}_std"], dtype=float)
                ax.plot(
                    layers,
                    mean,
                    marker=marker,
                    markersize=3.5,
                    color=color,
                    linestyle=style,
                    label=label,
                )
                ax.fill_between(
                    layers, mean - std, mean + std, color=color, alpha=0.15, linewidth=0
                )
            tied = ", tied embeddings" if info.get("tied_embeddings") else ""
            ax.set_title(f"{role}: {info['model']} ({info['layers']} layers{tied})", fontsize=9)
            ax.set_xlabel("layer (block output)")
            ax.set_ylabel("cos(h, decompose→recompose(h))")
            ax.set_ylim(-0.02, 1.05)
            ax.set_xlim(0.5, info["layers"] + 0.5)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=10, integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
        fig.suptitle(
            f"SemAlign Fig. 2 (reproduced, profile {record['profile']}): decomposition fidelity, "
            f"mean ± sd over {m['n_tokens']} tokens of {m['n_examples']} texts",
            fontsize=10,
        )
        fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- SemAlign Figs. 4-6


CKA_PANELS = (
    ("target_target_before", "target × target, before alignment", "target layer", "target layer"),
    ("target_target_after", "target × target, after alignment", "target layer", "target layer"),
    ("source_target_before", "source × target, before alignment", "target layer", "source layer"),
    ("source_target_after", "source × target, after alignment", "target layer", "source layer"),
)


def cka_figure(record: dict) -> Figure:
    """Linear CKA heatmaps (layers × layers): target×target and source×target, before/after
    alignment."""
    m = record["metrics"]
    cfg = record["config"]
    with matplotlib.style.context(STYLE):
        fig = new_figure(9.0, 8.2)
        axes = fig.subplots(2, 2)
        image = None
        for ax, (key, title, xlabel, ylabel) in zip(axes.ravel(), CKA_PANELS):
            mat = np.asarray(m["matrices"][key], dtype=float)
            image = ax.imshow(
                mat,
                origin="lower",
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
                aspect="auto",
                extent=(0.5, mat.shape[1] + 0.5, 0.5, mat.shape[0] + 0.5),
                interpolation="nearest",
            )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            for axis, n in ((ax.xaxis, mat.shape[1]), (ax.yaxis, mat.shape[0])):
                axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=min(n, 8), integer=True))
        fig.suptitle(
            f"SemAlign Figs. 4–6 (reproduced, profile {record['profile']}): "
            "linear CKA of block outputs\n"
            f"source {cfg['source']} ({m['source_layers']} layers) → target {cfg['target']} "
            f"({m['target_layers']} layers); {m['n_tokens']} tokens; short alignment "
            f"({m['alignment']['config']['steps_per_stage']} steps/stage)",
            fontsize=10,
        )
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        cax = fig.add_axes((0.91, 0.12, 0.02, 0.72))
        fig.colorbar(image, cax=cax, label="linear CKA")
    return fig


# ------------------------------------------------------------------- SALF deviations and gains


def _salf_panel(ax, record: dict) -> None:
    m = record["metrics"]
    L, eof = m["layers"], m["eof"]
    spaces = np.arange(L + 1)
    dev = np.asarray(m["deviation"], dtype=float)
    std = np.asarray(m["deviation_std"], dtype=float)
    ax.plot(
        spaces,
        dev,
        marker="o",
        markersize=3,
        color=DEVIATION_COLOR,
        label=f"deviation ({m['deviation_kind']})",
    )
    ax.fill_between(spaces, dev - std, dev + std, color=DEVIATION_COLOR, alpha=0.12, linewidth=0)
    ax.set_xlim(-0.5, L + 0.5)
    ax.set_xlabel("latent space k (0 = embeddings)", fontsize=8)
    ax.set_ylabel("deviation", fontsize=8, color=DEVIATION_COLOR)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=8, integer=True))
    gains = np.asarray(m["gains"], dtype=float)
    twin = ax.twinx()  # drawn below ax (see set_zorder): holds the frozen span and the bars
    twin.axvspan(-0.5, eof, color="0.88", zorder=0)
    colors = [EOF_COLOR if k == eof else GAIN_COLOR for k in range(1, L + 1)]
    # Block k moves the state from space k-1 to space k: its bar sits between them.
    twin.bar(
        np.arange(1, L + 1) - 0.5,
        gains,
        width=0.7,
        color=colors,
        alpha=0.55,
        hatch="///",
        edgecolor="0.3",
        linewidth=0.4,
        label=f"gain ({m['gain_kind']})",
    )
    twin.axhline(0.0, color="0.5", linewidth=0.6)
    twin.set_ylabel("gain", fontsize=8, color=GAIN_COLOR)
    twin.tick_params(labelsize=7)
    ax.axvline(eof, color=EOF_COLOR, linestyle="--", linewidth=1.2)
    ax.text(
        eof,
        1.0,
        f" eof={eof}",
        transform=ax.get_xaxis_transform(),
        color=EOF_COLOR,
        fontsize=8,
        va="top",
        ha="left",
    )
    ax.set_zorder(twin.get_zorder() + 1)  # the deviation line above the bars
    ax.patch.set_visible(False)
    ax.set_title(
        f"{record['config']['model']} / {record['config']['task']} (n={m['n']})", fontsize=9
    )


def salf_deviation_gain_figure(records: Sequence[dict]) -> Figure:
    """One panel per model × task: deviation per space (line), gain per block (bars), eof
    (dashed)."""
    records = sorted(records, key=lambda r: (r["config"]["model"], r["config"]["task"]))
    models = sorted({r["config"]["model"] for r in records})
    tasks = sorted({r["config"]["task"] for r in records})
    by_key = {(r["config"]["model"], r["config"]["task"]): r for r in records}
    profile = records[0]["profile"] if records else "?"
    with matplotlib.style.context(STYLE):
        fig = new_figure(3.8 * len(tasks), 2.9 * len(models) + 0.7)
        axes = fig.subplots(len(models), len(tasks), squeeze=False)
        for i, model in enumerate(models):
            for j, task in enumerate(tasks):
                if (model, task) in by_key:
                    _salf_panel(axes[i][j], by_key[(model, task)])
                else:
                    axes[i][j].set_axis_off()
        fig.suptitle(
            f"SALF deviations and gains (reproduced, profile {profile}); grey: frozen "
            "(embeddings and blocks 1..eof), green bar: eof block",
            fontsize=10,
        )
        fig.tight_layout()
    return fig


__all__ = [
    "cka_figure",
    "fidelity_figure",
    "new_figure",
    "png_bytes",
    "salf_deviation_gain_figure",
    "save_png",
    "show",
]
