"""Collect ``metrics.csv`` files into paper tables and plots (``icae aggregate``).

Inputs are the long-format metric files written by ``icae evaluate`` (columns run,
variant, model_type, baseline, base_model, task, dataset, mem_size, compression_rate,
position_layout, checkpoint, metric, value, n) and, for the loss curves, the ``log.csv``
files of training runs. Outputs, in ``--out`` (default ``<output_root>/<run_name>/tables``):

* ``metrics_long.csv``: every metric row, with variant and seed;
* ``metrics_wide.csv``: machine-readable, rows model variant x memory size x compression
  rate x position layout, columns ``<data set>/<metric>`` as written (mean over seeds);
* the paper tables, ``<task>.{tex,md,csv}`` per task and ``summary.{tex,md,csv}``
  (:mod:`icae.evaluation.tables`: human metric names with arrows, one scale per metric,
  best value bold, mean ± std over seeds, booktabs, caption and ``\\label``);
* ``plots/<task>_<vs|by>_<swept quantity>.{png,pdf,svg}`` (:mod:`icae.evaluation.figures`)
  and ``plots/training_loss.{png,pdf,svg}``: training (and eval) loss against the step.

Every number comes from the input files. Settings that do not apply are blank in the
CSV files and a dash in the paper tables: the plain LLM has no memory slots or position
layout, and the truncate baseline (cut to the memory budget) has no layout.

When a file sits where the workflow puts it
(``<run>/<branch>/eval/<variant>/<task>/metrics.csv``), the variant, task and seed
missing from its columns are read from the path (:func:`icae.planner.parse_output_path`,
the inverse of the workflow's own path and branch names).

Inputs are validated, and a problem names the file (and line): an empty or truncated
file (no final newline, a row with missing fields), a malformed CSV, missing columns, a
value that is not a number, a metric given twice. One result per key (variant, model
type, baseline, memory size, rate, layout, seed, task, metric): replicas are seeds, and
only results of distinct seeds are averaged (mean ± std); two results for the same key
from different files (the same variant evaluated twice, or two runs mixed) are an error.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from icae import tasks
from icae.planner import parse_output_path, parse_variant

log = logging.getLogger(__name__)

LAYOUT_ORDER = ["default", "linspace", "epl"]
ROW_KEYS = ["variant", "model_type", "mem_size", "compression_rate", "position_layout"]
LONG_COLUMNS = ["run", "variant", "model_type", "baseline", "base_model", "mem_size",
                "compression_rate", "position_layout", "seed", "task", "dataset", "metric",
                "value", "n", "checkpoint", "source"]


# ---------------------------------------------------------------------------------------
# Reading.


def _path_info(path: str) -> dict[str, Any]:
    place = parse_output_path(path)
    if place is None or place.step != "evaluate":
        return {}
    key = place.key
    return {"branch": place.branch, "variant": place.variant, "task": place.task,
            "seed": key.seed, "mem_size": key.mem_size, "compression_rate": key.rate,
            "position_layout": key.layout}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _is_truncate(row: pd.Series) -> bool:
    baseline = row.get("baseline")
    return (str(row["variant"]).startswith("truncate")
            or (not _is_missing(baseline) and str(baseline) == "truncate"))


REQUIRED_COLUMNS = ("model_type", "metric", "value", "n")
# One result per key; replicas differ in seed.
RESULT_KEY = ["variant", "model_type", "baseline", "mem_size", "compression_rate",
              "position_layout", "seed", "task", "metric"]


def _number(text: str, kind: type) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return kind is float or (math.isfinite(value) and value.is_integer())


def validate_metrics_file(path: str) -> None:
    """ValueError naming the file (and line) unless ``path`` is a complete metrics file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    if not raw.strip():
        raise ValueError(f"{path}: the metrics file is empty (an interrupted evaluation?); "
                         "rerun the evaluation")
    if not raw.endswith(b"\n"):
        raise ValueError(f"{path}: the last line has no newline: the file is truncated; "
                         "rerun the evaluation")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {', '.join(missing)} (expected the long "
                         "format written by icae evaluate)")
    if df.empty:
        raise ValueError(f"{path}: a header but no rows; rerun the evaluation")
    if "task" not in df.columns and "task" not in _path_info(path):
        raise ValueError(f"{path}: no column task, and the path does not say the task")
    checks = [("n", int, False), ("value", float, True), ("mem_size", int, True),
              ("compression_rate", float, True), ("seed", int, True)]
    for i, row in enumerate(df.itertuples(index=False), start=2):
        row = row._asdict() if hasattr(row, "_asdict") else dict(zip(df.columns, row))
        where = f"{path}:{i}"
        if not row["metric"]:
            raise ValueError(f"{where}: empty metric name (a truncated row?)")
        if row["model_type"] not in ("icae", "llm"):
            raise ValueError(f"{where}: model_type is {row['model_type']!r}, not icae or llm")
        for col, kind, blank_ok in checks:
            if col not in row:
                continue
            text = row[col].strip()
            if (not text and not blank_ok) or (text and not _number(text, kind)):
                want = "an integer" if kind is int else "a number"
                raise ValueError(f"{where}: column {col!r} is {row[col]!r}, not {want}"
                                 + (" (a truncated row?)" if not text else ""))
    dup = df[df.duplicated(["metric"] + [c for c in ("variant", "task", "seed")
                                         if c in df.columns], keep=False)]
    if len(dup):
        raise ValueError(f"{path}: metric {dup['metric'].iloc[0]!r} appears "
                         f"{len(dup)} times (lines "
                         f"{', '.join(str(i + 2) for i in dup.index[:4])})")


def _check_one_result_per_key(df: pd.DataFrame) -> None:
    key = df[RESULT_KEY].astype(str)
    dup = key.duplicated(keep=False)
    if not dup.any():
        return
    first = key[dup].iloc[0]
    rows = df[dup & (key == first).all(axis=1)]
    files = list(dict.fromkeys(rows["source"]))
    desc = ", ".join(f"{k}={first[k]}" for k in RESULT_KEY if first[k] not in ("None", "nan",
                                                                                "<NA>"))
    raise ValueError(
        f"two results for one key ({desc}) in {' and '.join(files[:3])}: only replicas with "
        "distinct seeds are averaged; remove one file, or give each replica its own seed "
        "(the workflow's branch folders ...-s<seed>/)")


def read_metrics(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate metric files into one long table (columns LONG_COLUMNS); each file is
    validated first (see the module docstring)."""
    frames = []
    for path in paths:
        path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"metrics file {path} does not exist")
        validate_metrics_file(path)
        df = pd.read_csv(path)
        info = _path_info(path)
        for col in LONG_COLUMNS:
            if col not in df.columns:
                df[col] = None
        if "variant" in info:
            generic = df["variant"].isna() | df["variant"].astype(str).isin(["", "default"])
            df.loc[generic, "variant"] = info["variant"]
        df["variant"] = df["variant"].fillna("default")
        for col in ("task", "seed", "mem_size", "compression_rate", "position_layout"):
            if info.get(col) is not None:
                df[col] = df[col].where(df[col].notna(), info[col])
        df["dataset"] = df["dataset"].where(df["dataset"].notna(),
                                            df["task"].map(tasks.dataset_of_task()))
        df["source"] = path
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=LONG_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    # Settings that do not apply to a variant.
    llm = df["model_type"].astype(str) == "llm"
    truncate = df.apply(_is_truncate, axis=1) if len(df) else pd.Series(dtype=bool)
    df.loc[llm, "position_layout"] = None
    df.loc[llm & ~truncate, ["mem_size", "compression_rate"]] = None
    df["mem_size"] = pd.to_numeric(df["mem_size"], errors="coerce").astype("Int64")
    df["compression_rate"] = pd.to_numeric(df["compression_rate"], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    _check_one_result_per_key(df)
    df = df[LONG_COLUMNS + [c for c in df.columns if c not in LONG_COLUMNS]]
    return _sort(df)


def _variant_rank(variant: str) -> tuple:
    v = str(variant)
    fixed = {"base": 0, "truncate": 1, "no_context": 2, "llm-ft": 3, "icae-pretrained": 4,
             "icae-ft": 5}  # llm-ft / icae-ft: fine-tuned rows of the summary table
    if v in fixed:
        return (fixed[v], "")
    parsed = parse_variant(v)
    if parsed is not None and parsed.finetuned_on is not None:
        return (fixed[f"{parsed.model_type}-ft"], _dataset_rank(parsed.finetuned_on))
    return (6, v)


def _dataset_rank(dataset: str) -> str:
    d, order = str(dataset), tasks.datasets()
    return f"{order.index(d):02d}" if d in order else f"99{d}"


def _layout_rank(layout: Any) -> tuple:
    if _is_missing(layout):
        return (-1, "")
    return (LAYOUT_ORDER.index(layout), "") if layout in LAYOUT_ORDER else (9, str(layout))


def _num_rank(value: Any) -> float:
    return -1.0 if _is_missing(value) else float(value)


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df.reset_index(drop=True)
    key = df.apply(lambda r: (_variant_rank(r["variant"]), str(r["model_type"]),
                              _num_rank(r["mem_size"]), _num_rank(r["compression_rate"]),
                              _layout_rank(r["position_layout"]), _num_rank(r["seed"]),
                              _dataset_rank(r["dataset"])), axis=1)
    order = sorted(range(len(df)), key=lambda i: key.iloc[i])  # stable: keeps metric order
    return df.iloc[order].reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Wide tables.


Metrics = list[str] | dict[str, list[str]] | None


def _metric_order(long: pd.DataFrame, task: str, metrics: Metrics) -> list[str]:
    """The metrics of ``task`` to show, in order: ``metrics`` is a list (for every task),
    a mapping task -> list (tasks not in it: all), or empty (all, in file order)."""
    found = list(dict.fromkeys(long.loc[long["task"] == task, "metric"].astype(str)))
    wanted = metrics.get(task) if isinstance(metrics, dict) else metrics
    if wanted:
        return [m for m in wanted if m in found]
    return found


def select_metrics(long: pd.DataFrame, metrics: Metrics) -> tuple[pd.DataFrame,
                                                                  dict[str, list[str]]]:
    """The rows of the selected metrics, and the metric order per data set."""
    order: dict[str, list[str]] = {}
    keep = pd.Series(False, index=long.index)
    for task in long["task"].dropna().unique():
        names = _metric_order(long, task, metrics)
        rows = (long["task"] == task) & long["metric"].astype(str).isin(names)
        keep |= rows
        for dataset in long.loc[rows, "dataset"].dropna().unique():
            order.setdefault(str(dataset), [])
            order[str(dataset)] += [m for m in names if m not in order[str(dataset)]]
    return long[keep], order


def wide_table(long: pd.DataFrame, metrics: Metrics = None) -> pd.DataFrame:
    """Rows ROW_KEYS, columns (dataset, metric, stat) with stat in mean/std/seeds."""
    df, order = select_metrics(long, metrics)
    df = df.copy()
    if df.empty:
        return pd.DataFrame()
    sentinel = "\x00na"
    keys = ROW_KEYS + ["dataset", "metric"]
    for col in keys:
        df[col] = df[col].astype(object).where(df[col].notna(), sentinel)
    # One value per seed first (several files of one seed would otherwise weigh more).
    per_seed = df.groupby(keys + ["seed"], dropna=False, sort=False)["value"].mean()
    grouped = per_seed.groupby(level=keys, sort=False)
    stats = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1),
                          "seeds": grouped.count()})
    wide = stats.unstack(["dataset", "metric"])
    wide.columns = wide.columns.reorder_levels([1, 2, 0])
    datasets = sorted({c[0] for c in wide.columns}, key=_dataset_rank)
    cols = [(d, m, s) for d in datasets for m in order.get(d, [])
            for s in ("mean", "std", "seeds") if (d, m, s) in wide.columns]
    wide = wide[cols]
    wide.index = wide.index.set_names(ROW_KEYS)
    index = wide.index.to_frame(index=False).map(lambda v: None if v == sentinel else v)
    wide.index = pd.MultiIndex.from_frame(index)
    order = sorted(range(len(wide)), key=lambda i: (
        _variant_rank(index.iloc[i]["variant"]), str(index.iloc[i]["model_type"]),
        _num_rank(index.iloc[i]["mem_size"]), _num_rank(index.iloc[i]["compression_rate"]),
        _layout_rank(index.iloc[i]["position_layout"])))
    return wide.iloc[order]


def wide_csv(wide: pd.DataFrame) -> pd.DataFrame:
    """Flat CSV: key columns, ``<dataset>/<metric>`` means, ``.../std`` when seeds > 1,
    and ``seeds`` (the most seeds behind any cell of the row)."""
    out = wide.index.to_frame(index=False)
    out["mem_size"] = pd.to_numeric(out["mem_size"], errors="coerce").astype("Int64")
    out["compression_rate"] = pd.to_numeric(out["compression_rate"], errors="coerce")
    multi = "seeds" in {c[2] for c in wide.columns} and (
        wide.xs("seeds", axis=1, level=2).max().max() > 1)
    for d, m, s in wide.columns:
        if s == "mean" or (s == "std" and multi):
            name = f"{d}/{m}" + ("/std" if s == "std" else "")
            out[name] = wide[(d, m, s)].to_numpy()
    if len(wide.columns):
        out["seeds"] = wide.xs("seeds", axis=1, level=2).max(axis=1).astype("Int64").to_numpy()
    return out


# ---------------------------------------------------------------------------------------
# Plots.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Text stays text in SVG and PDF (editable, searchable; TrueType fonts in PDF, as
    # publishers ask), instead of outlines / Type 3 fonts.
    matplotlib.rcParams.update({"svg.fonttype": "none", "pdf.fonttype": 42,
                                "ps.fonttype": 42})

    return plt


def _parse_log_arg(item: str) -> tuple[str, str, str]:
    """``[LABEL=]PATH`` -> (stage, series label, path)."""
    label = None
    path = item
    if "=" in item and not Path(item).exists():
        label, path = item.split("=", 1)
    place = parse_output_path(path)
    if place is not None and place.step in ("pretrain", "finetune"):
        stage = "pretrain" if place.step == "pretrain" else f"finetune {place.finetune}"
        return stage, label or place.branch, path
    return label or Path(path).parent.name, label or Path(path).parent.name, path


def plot_training_loss(logs: list[str], out_dir: Path) -> Path | None:
    """One panel per training stage (pretrain, finetune <dataset>-<model type>), one line
    per branch: ``loss`` (solid) and ``eval_loss`` (dashed) against ``step``."""
    if not logs:
        return None
    plt = _pyplot()
    stages: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for item in logs:
        stage, label, path = _parse_log_arg(item)
        if not Path(path).is_file():
            raise FileNotFoundError(f"training log {path} does not exist")
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            continue
        if "step" not in df.columns or not ({"loss", "eval_loss"} & set(df.columns)):
            log.warning("%s has no step/loss columns; skipped", path)
            continue
        stages.setdefault(stage, []).append((label, df))
    if not stages:
        return None
    names = sorted(stages, key=lambda s: (s != "pretrain", s))
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, stage in zip(axes.flat, names):
        for i, (label, df) in enumerate(stages[stage]):
            color = f"C{i % 10}"
            for col, style in (("loss", "-"), ("eval_loss", "--")):
                if col in df.columns:
                    d = df[["step", col]].apply(pd.to_numeric, errors="coerce").dropna()
                    if not d.empty:
                        ax.plot(d["step"], d[col], style, color=color, marker="." if
                                len(d) < 30 else None,
                                label=label if col == "loss" else f"{label} (eval)")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    from icae.evaluation.figures import save_figure

    path = save_figure(fig, out_dir / "training_loss")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# Entry point.


def table_metrics(long: pd.DataFrame, metrics: Metrics) -> dict[str, list[str]]:
    """Metrics of each task's paper table: the selection, or, for a task the selection
    leaves empty, its default headline metrics (every task evaluated gets a table)."""
    order = {}
    for task in long["task"].dropna().unique():
        names = _metric_order(long, task, metrics)
        if not names:
            names = _metric_order(long, task, tasks.headline_metrics()) or _metric_order(
                long, task, None)
        order[str(task)] = names
    return order


def aggregate(inputs: list[str], out: str | os.PathLike, logs: list[str] | None = None,
              metrics: Metrics = None, decimals: int = 2, run_name: str = "icae",
              base_model: str | None = None) -> dict[str, Path]:
    """Write metrics_long.csv, metrics_wide.csv, the paper tables (``<task>`` and
    ``summary``, each .tex/.md/.csv) and the figures (png/pdf/svg) into ``out``. The
    folder is replaced as a whole (never half old, half new); every metrics file is
    validated before anything is written."""
    from icae.data.io import relax_permissions
    from icae.evaluation.figures import plot_task
    from icae.evaluation.tables import paper_tables, short_model_name
    from icae.utils import atomic_directory, atomic_write_text

    out = Path(out)
    long = read_metrics(inputs)  # validated before anything is written
    with atomic_directory(out) as tmp:
        plots = tmp / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        built = {"long": tmp / "metrics_long.csv", "wide": tmp / "metrics_wide.csv"}
        atomic_write_text(built["long"], long.to_csv(index=False, float_format="%.10g"))
        wide = wide_table(long, metrics)
        if wide.empty:
            atomic_write_text(built["wide"], ",".join(ROW_KEYS) + "\n")
        else:
            atomic_write_text(built["wide"],
                              wide_csv(wide).to_csv(index=False, float_format="%.10g"))
        if base_model is None:
            models = long["base_model"].dropna().astype(str).unique()
            base_model = ", ".join(sorted(models)) if len(models) else "?"
        order = table_metrics(long, metrics)
        for table in paper_tables(long, order, run=run_name,
                                  model=short_model_name(base_model)):
            for ext, text in (("tex", table.to_latex(decimals)),
                              ("md", table.to_markdown(decimals)), ("csv", table.to_csv())):
                built[f"{table.name}.{ext}"] = tmp / f"{table.name}.{ext}"
                atomic_write_text(built[f"{table.name}.{ext}"], text)
        plt = _pyplot()
        for task in order:
            for path in plot_task(long, task, order[task], plots, plt):
                built[path.stem] = path
        loss = plot_training_loss(list(logs or []), plots)
        if loss is not None:
            built["training_loss"] = loss
        relax_permissions(tmp)
    # The paths the files have once the folder is in place.
    paths = {k: out / p.relative_to(tmp) for k, p in built.items()}
    log.info("aggregated %d metric rows from %d files into %s", len(long), len(inputs), out)
    return paths


def run(cfg, args) -> dict[str, Path]:
    """``icae aggregate --inputs M.csv ... [--logs [LABEL=]log.csv ...] [--out DIR]``."""
    options = (cfg.workflow or {}).get("tables", {}) or {}
    out = args.out or Path(cfg.output_root) / cfg.run_name / "tables"
    inputs = list(getattr(args, "inputs", []) or [])
    if not inputs:
        raise ValueError("no metric files given (--inputs)")
    metrics = options.get("metrics", tasks.headline_metrics())
    return aggregate(inputs, out, logs=list(getattr(args, "logs", []) or []),
                     metrics=metrics,
                     decimals=int(options.get("decimals", 2)), run_name=cfg.run_name,
                     base_model=cfg.model.base_model)
