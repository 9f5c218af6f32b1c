"""One drawing interface for the three plotting backends of arviz-plots (matplotlib, bokeh, plotly).

Each plot in :mod:`bayeshlm.plots` computes its numbers once and draws them through a :class:`Canvas`: a grid of
panels with points, segments, bands, lines, histograms and labels. The bokeh and plotly panels are created and
drawn by arviz-plots' backend interface (``arviz_plots.backend.<name>``: ``create_plotting_grid``, ``scatter``,
``line``, ``hspan``, ``hist``, ...), so one plot function serves every backend. matplotlib figures are built
without pyplot (no global figure state, headless-safe), with the same elements as arviz-plots' matplotlib backend
draws; an element given ``gid`` keeps it (matplotlib artist gid, bokeh renderer name, plotly trace ``meta``), so
tests and users can find it on any backend. arviz-plots, bokeh and plotly load only when such a figure is drawn.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..errors import OptionError

BACKENDS = ("matplotlib", "bokeh", "plotly")
DPI = 100  # dots per inch for the bokeh and plotly figure sizes

# matplotlib's default colour cycle (tab10), so the interactive backends draw the same colours
CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf")
LINESTYLES = {"bokeh": {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dashdot"},
              "plotly": {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}}
MARKERS = {"bokeh": {"o": "circle", "s": "square", "_": "dash", "x": "x", "*": "star"},
           "plotly": {"o": "circle", "s": "square", "_": "line-ew-open", "x": "x-thin-open", "*": "star"}}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}.")
    if backend != "matplotlib":
        for module in ("arviz_plots", backend):
            if importlib.util.find_spec(module) is None:
                raise OptionError(f"backend={backend!r} needs the {module} package: "
                                  f"pip install 'bayeshlm[interactive]' (or pip install {module}).")
    return backend


class Canvas:
    """A figure with ``rows`` x ``cols`` panels on ``backend``; ``figsize`` in inches. Panels are addressed by
    their flat index (row-major). Colours are matplotlib names ("C0".."C9", grey levels "0.6", "k")."""

    def __init__(self, backend: str = "matplotlib", figsize=(6.5, 4.0), rows: int = 1, cols: int = 1):
        self.backend = check_backend(backend)
        self.mpl = backend == "matplotlib"
        if self.mpl:
            from matplotlib.figure import Figure

            self.figure = Figure(figsize=figsize)
            self.panels = list(self.figure.subplots(rows, cols, squeeze=False).ravel())
        else:
            self.draw = importlib.import_module(f"arviz_plots.backend.{backend}")
            self.figure, panels = self.draw.create_plotting_grid(
                rows * cols, rows, cols, figsize=(figsize[0] * DPI, figsize[1] * DPI), figsize_units="dots",
                squeeze=False)
            self.panels = list(np.asarray(panels).ravel())

    # --- translation to the interactive backends ---------------------------------------------------------------
    def _color(self, color):
        if self.mpl or color is None:
            return color
        if color == "k":
            return "black"
        if color.startswith("C") and color[1:].isdigit():
            return CYCLE[int(color[1:]) % len(CYCLE)]
        try:
            level = round(255 * float(color))  # a matplotlib grey level such as "0.6"
        except ValueError:
            return color
        return f"rgb({level},{level},{level})" if self.backend == "plotly" else (level, level, level)

    def _tags(self, label, gid) -> dict:
        """Legend entry and findable name of one element on bokeh / plotly."""
        if self.backend == "plotly":
            return {"showlegend": label is not None, "name": label or "", "meta": {"gid": gid}}
        tags = {"name": gid} if gid else {}
        return {**tags, "legend_label": label} if label else tags

    def _size(self, area):
        """matplotlib marker area (points^2) -> marker size of the other backend (one value on bokeh)."""
        area = np.asarray(area, dtype=float)
        if self.backend == "plotly":
            return area  # arviz-plots' plotly scatter takes the square root
        return float(1.3 * np.sqrt(np.median(area)))

    @staticmethod
    def _stitch(starts, ends):
        """Segments (x0, y0) -> (x1, y1) as one polyline broken by NaN (one trace for all of them)."""
        starts, ends = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
        gap = np.full(len(starts), np.nan)
        x = np.column_stack([starts[:, 0], ends[:, 0], gap]).ravel()
        y = np.column_stack([starts[:, 1], ends[:, 1], gap]).ravel()
        return x, y

    # --- elements ------------------------------------------------------------------------------------------------
    def points(self, panel, x, y, *, size=20, color="C0", marker="o", hollow=False, label=None, gid=None,
               zorder=None, **mpl):
        ax = self.panels[panel]
        if self.mpl:
            colours = {"facecolors": "none", "edgecolors": color} if hollow else {"color": color}
            extra = {k: v for k, v in {"label": label, "gid": gid, "zorder": zorder}.items() if v is not None}
            return ax.scatter(x, y, s=size, marker=marker, **colours, **extra, **mpl)
        symbol = MARKERS[self.backend].get(marker, marker)
        kwargs = {"marker": symbol, "color": self._color(color), "size": self._size(size)}
        if hollow:
            kwargs.update(facecolor="rgba(0,0,0,0)" if self.backend == "plotly" else None,
                          edgecolor=self._color(color))
            if self.backend == "bokeh":
                kwargs.pop("facecolor")
                kwargs["fill_alpha"] = 0.0
        return self.draw.scatter(np.asarray(x, dtype=float), np.asarray(y, dtype=float), ax, **kwargs,
                                 **self._tags(label, gid))

    def markers(self, panel, x, y, *, color="C0", marker="o", size=4, label=None):
        """A few markers without a line (matplotlib: one Line2D, as ``ax.plot(x, y, "o")``)."""
        if self.mpl:
            return self.panels[panel].plot(x, y, marker, color=color, ms=size, label=label)[0]
        return self.points(panel, x, y, color=color, marker=marker, size=size**2, label=label)

    def segments(self, panel, starts, ends, *, color="0.6", width=0.8, style="-", label=None, gid=None,
                 arrows=False):
        """Straight segments from each (x0, y0) in ``starts`` to (x1, y1) in ``ends`` (matplotlib: arrows when
        ``arrows``; the interactive backends draw plain segments)."""
        ax = self.panels[panel]
        if self.mpl:
            if arrows:
                for (x0, y0), (x1, y1) in zip(starts, ends):
                    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                                arrowprops={"arrowstyle": "->", "color": color, "lw": width})
                return None
            from matplotlib.collections import LineCollection

            lines = LineCollection([[tuple(a), tuple(b)] for a, b in zip(starts, ends)], colors=color,
                                   linewidths=width, linestyles=style, label=label, gid=gid)
            return ax.add_collection(lines)
        x, y = self._stitch(starts, ends)
        return self.draw.line(x, y, ax, color=self._color(color), width=width,
                              linestyle=LINESTYLES[self.backend][style], **self._tags(label, gid))

    def vertical(self, panel, x, lower, upper, *, color="0.5", width=0.8, label=None, gid=None):
        """One vertical segment per x from lower to upper (matplotlib: ``vlines``, one LineCollection)."""
        if self.mpl:
            extra = {k: v for k, v in {"label": label, "gid": gid}.items() if v is not None}
            return self.panels[panel].vlines(x, lower, upper, color=color, lw=width, **extra)
        x = np.asarray(x, dtype=float)
        return self.segments(panel, np.column_stack([x, lower]), np.column_stack([x, upper]), color=color,
                             width=width, label=label, gid=gid)

    def horizontal(self, panel, y, left, right, *, color="0.5", width=0.8, style="-", label=None, gid=None):
        """One horizontal segment per y from left to right (matplotlib: ``hlines``)."""
        if self.mpl:
            extra = {k: v for k, v in {"label": label, "gid": gid}.items() if v is not None}
            styles = {"linestyles": {"--": "dashed", ":": "dotted"}.get(style, "solid")}
            return self.panels[panel].hlines(y, left, right, color=color, lw=width, **styles, **extra)
        y = np.broadcast_to(np.asarray(y, dtype=float), np.shape(np.atleast_1d(left)))
        return self.segments(panel, np.column_stack([np.atleast_1d(left), y]),
                             np.column_stack([np.atleast_1d(right), y]), color=color, width=width, style=style,
                             label=label, gid=gid)

    def columns(self, panel, x, lower, upper, *, color="C2", alpha=0.15, label=None, gid=None):
        """A shaded column of width 1 per x from lower to upper (matplotlib: bar patches)."""
        lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        if self.mpl:
            return self.panels[panel].bar(x, upper - lower, bottom=lower, width=1.0, color=color, alpha=alpha,
                                          gid=gid, label=label)
        x = np.asarray(x, dtype=float)
        return self.draw.hist(upper, x - 0.5, x + 0.5, self.panels[panel], bottom=lower,
                              color=self._color(color), alpha=alpha, **self._tags(label, gid))

    def line(self, panel, x, y, *, color="k", width=1.5, style="-", alpha=1.0, marker=None, label=None, gid=None):
        if self.mpl:
            extra = {k: v for k, v in {"label": label, "gid": gid, "marker": marker}.items() if v is not None}
            return self.panels[panel].plot(x, y, color=color, lw=width, ls=style, alpha=alpha, ms=3, **extra)[0]
        return self.draw.line(np.asarray(x, dtype=float), np.asarray(y, dtype=float), self.panels[panel],
                              color=self._color(color), width=width, alpha=alpha,
                              linestyle=LINESTYLES[self.backend][style], **self._tags(label, gid))

    def fill_between(self, panel, x, lower, upper, *, color="k", alpha=0.15, label=None, gid=None):
        if self.mpl:
            return self.panels[panel].fill_between(x, lower, upper, color=color, alpha=alpha, label=label)
        return self.draw.fill_between_y(np.asarray(x, dtype=float), np.asarray(lower, dtype=float),
                                        np.asarray(upper, dtype=float), self.panels[panel],
                                        color=self._color(color), alpha=alpha, **self._tags(label, gid))

    def histogram(self, panel, values, *, bins=60, color="0.75", label=None):
        """Density histogram; returns (densities, bin edges)."""
        if self.mpl:
            density, edges, _ = self.panels[panel].hist(values, bins=bins, density=True, color=color, label=label)
            return density, edges
        density, edges = np.histogram(values, bins=bins, density=True)
        self.draw.hist(density, edges[:-1], edges[1:], self.panels[panel], color=self._color(color),
                       **self._tags(label, None))
        return density, edges

    def vline(self, panel, x, *, color="k", width=1.0, style="-", label=None):
        """A vertical line across the panel (on bokeh / plotly with its label in the legend through a trace)."""
        ax = self.panels[panel]
        if self.mpl:
            return ax.axvline(x, color=color, lw=width, ls=style, label=label)
        self.draw.vline(x, ax, color=self._color(color), width=width, linestyle=LINESTYLES[self.backend][style])
        if label:  # lines across a panel carry no legend entry there: an invisible point does
            self.draw.scatter([x], [np.nan], ax, color=self._color(color), size=1, **self._tags(label, None))
        return None

    def hspan(self, panel, lower, upper, *, color="C2", alpha=0.15, label=None):
        ax = self.panels[panel]
        if self.mpl:
            return ax.axhspan(lower, upper, color=color, alpha=alpha, label=label)
        return self.draw.hspan(lower, upper, ax, color=self._color(color), alpha=alpha)

    def polygon(self, panel, x, y_lower, y_upper, *, color="k", label=None):
        """A filled shape between two curves over x (a diamond for a pooled estimate)."""
        if self.mpl:
            from matplotlib.patches import Polygon

            outline = [*zip(x, y_lower), *zip(x[::-1], y_upper[::-1])]
            return self.panels[panel].add_patch(Polygon(outline, closed=True, color=color, zorder=3, label=label))
        return self.fill_between(panel, x, y_lower, y_upper, color=color, alpha=1.0, label=label)

    # --- axes ---------------------------------------------------------------------------------------------------
    def labels(self, panel, *, title=None, xlabel=None, ylabel=None, title_size=None, title_loc=None):
        ax = self.panels[panel]
        if self.mpl:
            if title is not None:
                ax.set_title(title, **{k: v for k, v in {"fontsize": title_size, "loc": title_loc}.items() if v})
            if xlabel is not None:
                ax.set_xlabel(xlabel)
            if ylabel is not None:
                ax.set_ylabel(ylabel)
            return
        for text, draw in ((title, self.draw.title), (xlabel, self.draw.xlabel), (ylabel, self.draw.ylabel)):
            if text is not None:
                draw(text, ax)

    def yticks(self, panel, ticks, labels=None):
        if self.mpl:
            self.panels[panel].set_yticks(ticks, labels)
        elif len(ticks) == 0:
            self.draw.remove_ticks(self.panels[panel], axis="y")
        else:
            self.draw.yticks(list(ticks), list(labels) if labels is not None else [f"{t:g}" for t in ticks],
                             self.panels[panel])

    def limits(self, panel, *, x=None, y=None):
        for lims, axis in ((x, "x"), (y, "y")):
            if lims is None:
                continue
            if self.mpl:
                getattr(self.panels[panel], f"set_{axis}lim")(*lims)
            else:
                getattr(self.draw, f"{axis}lim")(tuple(float(v) for v in lims), self.panels[panel])

    def hide(self, panel):
        """Remove an unused panel of the grid."""
        if self.mpl:
            self.panels[panel].remove()
        elif self.backend == "bokeh":
            self.panels[panel].visible = False

    def legend(self, panel=0, **mpl):
        """matplotlib: ``ax.legend(**mpl)`` on ``panel`` (``panel=None``: one figure legend from panel 0);
        bokeh/plotly show the labelled elements' legend already."""
        if not self.mpl:
            return
        if panel is None:
            self.figure.legend(*self.panels[0].get_legend_handles_labels(), **mpl)
        else:
            self.panels[panel].legend(**mpl)

    def finish(self, **tight):
        """The figure: matplotlib Figure, bokeh layout (GridPlot) or plotly Figure."""
        if self.mpl:
            self.figure.tight_layout(**tight)
        return self.figure
