"""Figures of the aggregate step: each metric against what the sweep varies.

Per task, one figure per swept quantity, each metric a panel, saved as PNG, PDF and SVG
(``plots/<task>_<kind>.{png,pdf,svg}``):

* ``vs_compression_rate``: when the configured rate varies; the x-axis is the measured
  effective rate (``compression_rate_effective``: context tokens / memory slots on the
  evaluated data) when the metric files carry it, each point marked with its configured
  rate, else the configured rate (``..._vs_effective_compression_rate`` then);
* ``vs_mem_size``: when the memory size varies;
* ``by_layout``: when only the position layout varies (bars per layout);
* ``by_method``: when the run sweeps nothing (one bar per method), so no axis is a
  constant.

Methods that do not depend on the swept quantity (the plain LLM with its full context,
with no context, fine-tuned) are horizontal reference lines. Series (or reference
lines) with identical values are drawn once with their labels joined, so none hides
behind another. Values are on the tables' scale (:func:`icae.evaluation.tables.metric_info`);
with several seeds, points are means with a ±1 std error bar.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from icae.evaluation.tables import LAYOUT_NAMES, metric_info, variant_name
from icae.tasks import title
from icae.utils import atomic_file

FORMATS = ("png", "pdf", "svg")


def save_figure(fig, stem: Path) -> Path:
    """Write ``stem``.png/.pdf/.svg (each atomically); return the PNG's path."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext in FORMATS:
        with atomic_file(stem.with_suffix(f".{ext}"), "wb") as fh:
            fig.savefig(fh, dpi=150 if ext == "png" else None, bbox_inches="tight",
                        format=ext)
    return stem.with_suffix(".png")


def _blank(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _seed_stats(frame: pd.DataFrame, keys: list[str], value: str = "shown") -> pd.DataFrame:
    frame = frame.copy()
    for k in keys + ["seed"]:
        frame[k] = frame[k].astype(object).where(frame[k].notna(), None)
    per_seed = frame.groupby(keys + ["seed"], dropna=False, sort=False)[value].mean()
    g = per_seed.groupby(level=keys, dropna=False, sort=False)
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1)}).reset_index()


def _describe(row: dict, parts: list[str]) -> str:
    out = [variant_name(row["variant"])]
    if "mem_size" in parts and not _blank(row.get("mem_size")):
        out.append(f"mem {int(row['mem_size'])}")
    if "compression_rate" in parts and not _blank(row.get("compression_rate")):
        out.append(f"rate {float(row['compression_rate']):g}")
    if "position_layout" in parts and not _blank(row.get("position_layout")):
        out.append(LAYOUT_NAMES.get(row["position_layout"], row["position_layout"]))
    return ", ".join(out)


def _merge_identical(series: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """Join the labels of series whose points are all equal (to 1e-9)."""
    merged: dict[tuple, list] = {}
    for label, points in series:
        key = tuple(tuple(round(float(v), 9) if not _blank(v) else None for v in p)
                    for p in points)
        merged.setdefault(key, [label, points])
        if merged[key][0] != label:
            merged[key][0] += f" = {label}"
    return [(label, points) for label, points in merged.values()]


def _swept(compressed: pd.DataFrame) -> list[str]:
    icae = compressed[compressed["model_type"].astype(str) == "icae"]
    base = icae if not icae.empty else compressed
    return [k for k in ("compression_rate", "mem_size", "position_layout")
            if base[k].dropna().nunique() > 1]


def plot_task(long: pd.DataFrame, task: str, metrics: list[str], out_dir: Path,
              plt) -> list[Path]:
    sub = long[(long["task"] == task) & long["metric"].astype(str).isin(metrics)].copy()
    if sub.empty:
        return []
    sub["shown"] = [v * metric_info(task, m).factor
                    for v, m in zip(sub["value"], sub["metric"].astype(str))]
    compressed = sub[sub["mem_size"].notna()]
    refs = sub[sub["mem_size"].isna()]
    swept = _swept(compressed)
    has_eff = ("compression_rate_effective" in sub.columns
               and compressed["compression_rate_effective"].notna().any())
    written = []
    if "compression_rate" in swept:
        kind = "vs_effective_compression_rate" if has_eff else "vs_compression_rate"
        written.append(_lines(sub, compressed, refs, task, metrics, out_dir, plt, kind,
                              x="compression_rate_effective" if has_eff
                              else "compression_rate"))
    if "mem_size" in swept:
        written.append(_lines(sub, compressed, refs, task, metrics, out_dir, plt,
                              "vs_mem_size", x="mem_size"))
    if swept == ["position_layout"]:
        written.append(_bars(sub, task, metrics, out_dir, plt, "by_layout"))
    if not swept:
        written.append(_bars(sub, task, metrics, out_dir, plt, "by_method"))
    return written


REF_STYLES = [("black", (0, (5, 2))), ("dimgray", (0, (1, 1.5))),
              ("black", (0, (6, 2, 1, 2))), ("gray", (0, (3, 3)))]


def _reference(ax, j: int, y: float, label: str) -> None:
    """A rate-independent method: a horizontal line, greys and dashes apart from the
    coloured series."""
    color, dashes = REF_STYLES[j % len(REF_STYLES)]
    ax.axhline(y, linestyle=dashes, linewidth=1.3, color=color, label=f"{label} (reference)")


def _panels(plt, n: int):
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows),
                             squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def _finish(fig, axes, stem: Path, plt) -> Path:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="upper center",
                   ncol=min(3, len(labels)), bbox_to_anchor=(0.5, 0.0), fontsize="small",
                   frameon=False)
    fig.tight_layout()
    path = save_figure(fig, stem)
    plt.close(fig)
    return path


X_LABELS = {"compression_rate": "compression rate (configured)",
            "compression_rate_effective": "effective compression rate "
                                          "(context tokens / memory slots)",
            "mem_size": "memory slots (mem_size)"}


def _lines(sub, compressed, refs, task, metrics, out_dir, plt, kind, x) -> Path:
    fig, axes = _panels(plt, len(metrics))
    # A series is everything but x (and, on the effective-rate axis, the configured rate
    # the points are marked with).
    parts = [k for k in ("mem_size", "compression_rate", "position_layout")
             if k != x and not (x == "compression_rate_effective" and k == "compression_rate")]
    styles = ["-", "--", "-.", ":"]
    colors: dict[str, int] = {}  # one colour / marker per label across the panels
    ref_styles: dict[str, int] = {}
    for ax, metric in zip(axes, metrics):
        info = metric_info(task, metric)
        m = compressed[compressed["metric"].astype(str) == metric]
        eff = x == "compression_rate_effective"
        group = ["variant", *parts, "compression_rate" if eff else x]
        stats = _seed_stats(m, group, "shown")
        if eff:  # x: the effective rate measured for each configured rate
            xs = _seed_stats(m.assign(xv=pd.to_numeric(m[x], errors="coerce")), group, "xv")
            stats[x] = xs["mean"].to_numpy()
        series = []
        for key, grp in stats.groupby(["variant", *parts], dropna=False, sort=False):
            grp = grp.dropna(subset=[x]).sort_values(x)
            if grp.empty:
                continue
            row = dict(zip(["variant", *parts], key if isinstance(key, tuple) else (key,)))
            points = tuple(zip(grp[x], grp["mean"], grp["std"].fillna(0),
                               grp["compression_rate"] if eff else [None] * len(grp)))
            series.append((_describe(row, parts), points))
        for label, points in _merge_identical(series):
            i = colors.setdefault(label, len(colors))
            xv, yv, err, conf = zip(*points)
            ax.errorbar(xv, yv, yerr=err if any(err) else None, marker="os^Dv<>"[i % 7],
                        linestyle=styles[(i // 10) % len(styles)], capsize=3,
                        color=f"C{i % 10}", label=label)
            for a, b, c in zip(xv, yv, conf):
                if c is not None and not _blank(c):
                    ax.annotate(f"r{float(c):g}", (a, b), textcoords="offset points",
                                xytext=(4, 4), fontsize="x-small")
        r = refs[refs["metric"].astype(str) == metric]
        lines = [(variant_name(row["variant"]), ((row["mean"],),))
                 for _, row in _seed_stats(r, ["variant"], "shown").iterrows()]
        for label, ((y,),) in _merge_identical(lines):
            _reference(ax, ref_styles.setdefault(label, len(ref_styles)), y, label)
        values = sorted(stats[x].dropna().unique())
        if x in ("compression_rate", "mem_size") and values and min(values) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(values)
            ax.set_xticklabels([f"{v:g}" for v in values])
            ax.minorticks_off()
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(info.header(("↑", "↓")))
        ax.set_title(f"{title(task)}: {info.label}")
        ax.grid(alpha=0.3)
    return _finish(fig, axes, out_dir / f"{task}_{kind}", plt)


def _bars(sub, task, metrics, out_dir, plt, kind) -> Path:
    fig, axes = _panels(plt, len(metrics))
    for ax, metric in zip(axes, metrics):
        info = metric_info(task, metric)
        m = sub[sub["metric"].astype(str) == metric]
        if kind == "by_layout":
            comp = m[m["position_layout"].notna()]
            stats = _seed_stats(comp, ["variant", "position_layout"], "shown")
            layouts = [lay for lay in LAYOUT_NAMES if lay in set(stats["position_layout"])]
            layouts += sorted(set(stats["position_layout"]) - set(layouts))
            variants = list(dict.fromkeys(stats["variant"]))
            width = 0.8 / max(1, len(variants))
            for i, v in enumerate(variants):
                s = stats[stats["variant"] == v].set_index("position_layout")
                xs = [k + (i - (len(variants) - 1) / 2) * width for k in range(len(layouts))]
                ys = [s["mean"].get(lay, float("nan")) for lay in layouts]
                err = [s["std"].get(lay, float("nan")) for lay in layouts]
                ax.bar(xs, ys, width, yerr=[0 if _blank(e) else e for e in err],
                       capsize=3, label=variant_name(v), color=f"C{i % 10}")
            ax.set_xticks(range(len(layouts)))
            ax.set_xticklabels([LAYOUT_NAMES.get(lay, lay) for lay in layouts])
            ax.set_xlabel("position layout")
            refs = m[m["position_layout"].isna()]
            lines = [(_describe(row, ["mem_size", "compression_rate"]), ((row["mean"],),))
                     for _, row in _seed_stats(refs, ["variant", "mem_size",
                                                      "compression_rate"],
                                               "shown").iterrows()]
            for j, (label, ((y,),)) in enumerate(_merge_identical(lines)):
                _reference(ax, j, y, label)
        else:
            stats = _seed_stats(m, ["variant", "mem_size", "compression_rate",
                                    "position_layout"], "shown")
            labels = [_describe(row, ["mem_size", "compression_rate", "position_layout"])
                      for _, row in stats.iterrows()]
            ax.bar(range(len(stats)), stats["mean"],
                   yerr=stats["std"].fillna(0) if stats["std"].notna().any() else None,
                   capsize=3, color=[f"C{i % 10}" for i in range(len(stats))])
            ax.set_xticks(range(len(stats)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize="small")
            ax.set_xlabel("method")
        ax.set_ylabel(info.header(("↑", "↓")))
        ax.set_title(f"{title(task)}: {info.label}")
        ax.grid(alpha=0.3, axis="y")
    return _finish(fig, axes, out_dir / f"{task}_{kind}", plt)
