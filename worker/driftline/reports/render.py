"""Drawing the reports: matplotlib figures as inline SVG in one self-contained HTML page.

Why matplotlib and SVG: the page must open anywhere an operator can open a file (a
browser with no network, a ticket attachment, an artifact store), so nothing is fetched
and no script runs; inline SVG keeps the text and lines sharp at any zoom, selectable and
searchable (``svg.fonttype = none``: the labels stay text, in the browser's own font), at a
few tens of kB per plot.  matplotlib draws static plots without a display, and is one
pinned package (the ``report`` extra); a JavaScript charting library would need its
runtime inlined into every page (hundreds of kB) and a browser with scripts on.

The figures are built with ``matplotlib.figure.Figure`` and its SVG canvas directly, never
``pyplot``: no global state, no GUI backend, nothing left open between plots.  Imported
only by ``driftline report``: the worker never loads matplotlib.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from driftline.reports.data import CalibrationBins, Curve, Histogram

mpl.rcParams.update(
    {
        "svg.fonttype": "none",  # text stays text: small, sharp, searchable
        "svg.hashsalt": "driftline",  # stable element ids: the same report twice is equal
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)
#: Colour-blind-safe (Okabe-Ito): reference/train, live/test, then baselines.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#999999", "#CC79A7", "#E69F00")


def to_svg(figure: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, no DOCTYPE)."""
    FigureCanvasSVG(figure)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def curves_plot(
    title: str, curves: Sequence[Curve], xlabel: str, ylabel: str, area_name: str
) -> str:
    """ROC or PR curves of the model and its baselines on one axes."""
    figure = Figure(figsize=(5.0, 4.2))
    axes = figure.add_subplot()
    for colour, curve in zip(COLOURS[1:] + COLOURS[:1], curves, strict=False):
        style = "--" if curve.label.startswith("majority") else "-"
        area = "" if curve.area is None else f" ({area_name} {curve.area:.3f})"
        axes.plot(curve.x, curve.y, style, color=colour, lw=1.8, label=f"{curve.label}{area}")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    axes.legend(loc="best", fontsize=9)
    return to_svg(figure)


def calibration_plot(title: str, bins: CalibrationBins) -> str:
    """Observed positive rate against mean score per bin, with the diagonal."""
    figure = Figure(figsize=(5.0, 4.2))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], ":", color=COLOURS[3], label="perfectly calibrated")
    axes.plot(bins.mean_score, bins.positive_rate, "o-", color=COLOURS[1], label="model")
    for x, y, n in zip(bins.mean_score, bins.positive_rate, bins.count, strict=True):
        axes.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), size=7)
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="mean calibrated score in bin",
        ylabel="observed churn rate",
        title=title,
    )
    axes.legend(loc="upper left", fontsize=9)
    return to_svg(figure)


def confusion_plot(title: str, matrix: dict[str, int]) -> str:
    """The 2x2 confusion matrix at the model's threshold, counts and row shares."""
    cells = np.array([[matrix["tn"], matrix["fp"]], [matrix["fn"], matrix["tp"]]], dtype=float)
    rows = cells.sum(axis=1, keepdims=True)
    shares = np.divide(cells, rows, out=np.zeros_like(cells), where=rows > 0)
    figure = Figure(figsize=(4.2, 3.6))
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.grid(False)
    for (i, j), count in np.ndenumerate(cells):
        colour = "white" if shares[i, j] > 0.6 else "black"
        axes.text(j, i, f"{int(count)}\n{shares[i, j]:.0%}", ha="center", va="center", c=colour)
    axes.set_xticks([0, 1], ["retained", "churned"])
    axes.set_yticks([0, 1], ["retained", "churned"])
    axes.set(xlabel="predicted", ylabel="actual", title=title)
    return to_svg(figure)


def importance_plot(title: str, importances: Sequence[dict[str, Any]]) -> str:
    """Horizontal bars of the recorded impurity importances, largest on top."""
    items = list(importances)[::-1]
    figure = Figure(figsize=(6.4, 0.28 * len(items) + 1.0))
    axes = figure.add_subplot()
    axes.barh(
        [str(i["feature"]) for i in items],
        [float(i["importance"]) for i in items],
        color=COLOURS[0],
    )
    axes.set(xlabel="impurity importance", title=title)
    axes.tick_params(axis="y", labelsize=8)
    return to_svg(figure)


def histogram_plot(histogram: Histogram, title: str | None = None) -> str:
    """Side-by-side bars of each sample's shares per bin; missing shares in the legend."""
    names = [n for n in histogram.shares if histogram.shares[n].size]
    width = 0.8 / max(1, len(names))
    positions = np.arange(len(histogram.labels))
    wide = len(histogram.labels) > 8 or sum(len(label) for label in histogram.labels) > 45
    figure = Figure(figsize=(6.4 if wide else 5.0, 3.4))
    axes = figure.add_subplot()
    for k, name in enumerate(names):
        missing = histogram.missing.get(name, 0.0)
        label = f"{name} (missing {missing:.1%})" if missing else name
        axes.bar(
            positions + (k - (len(names) - 1) / 2) * width,
            histogram.shares[name],
            width,
            color=COLOURS[k % len(COLOURS)],
            label=label,
        )
    axes.set_xticks(
        positions, histogram.labels, rotation=35 if wide else 0, ha="right" if wide else "center"
    )
    axes.tick_params(axis="x", labelsize=7 if wide else 8)
    psi = "" if histogram.psi is None else f"  (PSI {histogram.psi:.3f})"
    axes.set(ylabel="share of observed rows", title=(title or histogram.feature) + psi)
    axes.legend(fontsize=8)
    return to_svg(figure)


# --- the page --------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1180px; color: #1b1b1b; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.sub { color: #555; margin-top: 0; }
.grid { display: flex; flex-wrap: wrap; gap: 1.2rem; }
figure.plot { margin: 0; } figure.plot svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
table.kv td:last-child, table.kv th { text-align: left; }
.warn { color: #a04000; } .note { color: #555; font-size: .9rem; }
"""


def figure(name: str, svg: str) -> str:
    """A plot in the page; ``data-plot`` names it for the render test."""
    return f'<figure class="plot" data-plot="{html.escape(name)}">{svg}</figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], css: str = "") -> str:
    """A plain HTML table; floats to 3 decimals, None as n/a; ``css`` its class."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.3f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    klass = f' class="{html.escape(css)}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole HTML document: ``sections`` are (heading, HTML body) pairs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f'<h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>',
    ]
    for heading, body in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{body}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
