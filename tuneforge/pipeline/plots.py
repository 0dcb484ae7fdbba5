"""The run report's plots, drawn with matplotlib as inline SVG (text kept as text, no network, no files).
Imports no torch; matplotlib is imported on the first plot, through its object API (no pyplot, so the
caller's backend is left alone).

    svg = training_curves(record.history)       # None when there is nothing to draw
"""

from __future__ import annotations

import io
from typing import Any

BASE, TUNED = "#9aa5b1", "#2f6fde"
COLOURS = ("#2f6fde", "#e07b39", "#3f9c5a", "#b03a8c")
STYLE = {
    "svg.fonttype": "none",  # text stays text: small, selectable, drawn in the page's font
    "svg.hashsalt": "tuneforge",  # the same ids every time: the same figure gives the same bytes
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e7eb",
}


def _figure(panels: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * panels, 3.0), layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def _svg(fig) -> str:
    """The figure as an <svg> element (without the XML prolog) to put inside a page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def training_curves(history: list[dict[str, Any]]) -> str | None:
    """Training loss (and validation loss where evaluated) and learning rate against the step."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    lr = [(h["step"], h["learning_rate"]) for h in history if "learning_rate" in h]
    if not (train or evals or lr):
        return None
    with matplotlib.rc_context(STYLE):
        fig, (loss_ax, lr_ax) = _figure(2)
        if train:
            loss_ax.plot(*zip(*train, strict=True), marker=".", color=TUNED, label="training loss")
        if evals:
            loss_ax.plot(
                *zip(*evals, strict=True), marker="o", ls="--", color=COLOURS[1], label="validation loss"
            )
        loss_ax.set(xlabel="step", ylabel="loss", title="Loss")
        loss_ax.legend(frameon=False)
        if lr:
            lr_ax.plot(*zip(*lr, strict=True), marker=".", color=COLOURS[2])
        lr_ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        for ax in (loss_ax, lr_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        return _svg(fig)


def metric_bars(names: list[str], base: list[float], tuned: list[float]) -> str | None:
    """Each metric's mean, base against fine-tuned, side by side."""
    import matplotlib

    if not names:
        return None
    with matplotlib.rc_context(STYLE):
        fig, (ax,) = _figure(1)
        xs = range(len(names))
        for dx, values, colour, label in ((-0.2, base, BASE, "base"), (0.2, tuned, TUNED, "fine-tuned")):
            bars = ax.bar([x + dx for x in xs], values, width=0.4, color=colour, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(list(xs), names)
        ax.set(ylabel="mean score", title="Base against fine-tuned")
        top = max([1.0, *base, *tuned])
        ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
        if top == 1.0:  # scores: no tick above 1
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.legend(frameon=False, loc="upper center", ncols=2)
        return _svg(fig)


def serving_sweep(loads: list[float], xlabel: str, levels: list[dict[str, Any]]) -> str | None:
    """Throughput and latency percentiles against the load (concurrency or request rate), one point per
    benchmarked level; `levels` are the runs' summaries, in the order of `loads`."""
    import matplotlib

    if not levels:
        return None
    with matplotlib.rc_context(STYLE):
        fig, (tput_ax, lat_ax) = _figure(2)
        rps = [s["request_throughput_rps"] for s in levels]
        tput_ax.plot(loads, rps, marker="o", color=COLOURS[0])
        for x, y, s in zip(loads, rps, levels, strict=True):  # output tokens/s follows requests/s: as labels
            label = f"{y:.3g} req/s\n{_number(s['output_throughput_tok_s']):.3g} tok/s"
            tput_ax.annotate(
                label, (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8
            )
        tput_ax.set(xlabel=xlabel, ylabel="requests/s", title="Throughput")
        tput_ax.set_ylim(0, max(rps, default=0) * 1.35 or 1)
        tput_ax.margins(x=0.15)
        for k, (metric, q) in enumerate((("e2e", "p50"), ("e2e", "p95"), ("e2e", "p99"), ("ttft", "p50"))):
            values = [_number(s["latency_ms"][metric][q]) for s in levels]
            lat_ax.plot(loads, values, marker="o", color=COLOURS[k], label=f"{metric.upper()} {q}")
        lat_ax.set(xlabel=xlabel, ylabel="latency (ms)", title="Latency")
        lat_ax.set_ylim(bottom=0)
        lat_ax.margins(x=0.15)
        lat_ax.legend(frameon=False, fontsize=8, loc="best")
        for ax in (tput_ax, lat_ax):
            ax.set_xticks(loads)
        return _svg(fig)


def _number(value: float | None) -> float:
    """A missing value (no request completed at that load) leaves a gap in the line."""
    return float("nan") if value is None else value
