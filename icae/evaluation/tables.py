"""Paper tables from the long metric table (:func:`icae.evaluation.aggregate.read_metrics`).

One table per task (``<task>.{tex,md,csv}``) and a summary table (``summary.*``, the
headline metric of every task side by side). In each:

* rows are methods (model variant x memory size x configured compression rate x
  position layout); when the metric files carry ``compression_rate_effective`` (context
  tokens / memory slots measured on the evaluated data), the task tables show it next to
  the configured rate;
* columns are metrics under human names with an arrow (higher / lower is better);
* one scale per metric: every score in [0, 1] is shown in percent, like SQuAD's
  exact match and F1, which ``icae evaluate`` already writes in percent
  (:data:`ALREADY_PERCENT`); losses stay in nats, times in seconds;
* with several seeds a cell is mean ± sample standard deviation over seeds;
* the best value of each column is bold (all rows equal to it at the shown precision);
* LaTeX uses booktabs rules and carries a caption and a ``\\label``; it is written by
  pandas' ``Styler.to_latex``, Markdown by ``DataFrame.to_markdown`` (tabulate).

CSV files hold the same rows and columns with unrounded numbers (mean and std in
separate columns); ``metrics_long.csv`` stays the machine-readable source of everything.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from icae import tasks

# Scores in [0, 1] in metrics.csv, shown in percent.
FRACTIONS = {"bleu1", "bleu4", "token_accuracy", "exact_match", "f1", "similarity", "pass@0.8"}
UP, DOWN, NEUTRAL = 1, -1, 0
# metric -> (label, direction); ar_/tf_/trajectory_ prefixes are handled in metric_info.
METRICS = {
    "bleu1": ("BLEU-1", UP),
    "bleu4": ("BLEU-4", UP),
    "token_accuracy": ("Token acc.", UP),
    "exact_match": ("EM", UP),
    "f1": ("F1", UP),
    "similarity": ("Similarity", UP),
    "pass@0.8": ("Pass@0.8", UP),
    "loss": ("Loss", DOWN),
    "compression_rate": ("Compression", NEUTRAL),
    "latency_s": ("Latency (s)", DOWN),
    "tokens_per_second": ("Tokens/s", UP),
    "compress_time_s": ("Compress time (s)", DOWN),
    "generate_time_s": ("Generate time (s)", DOWN),
    "wall_time_s": ("Wall time (s)", DOWN),
}
PREFIXES = {"ar_": " (AR)", "tf_": " (TF)"}
LAYOUT_NAMES = {"default": "default", "linspace": "linspace", "epl": "EPL"}


@dataclass(frozen=True)
class MetricInfo:
    label: str
    direction: int
    factor: float  # multiply metrics.csv values by this to get the shown scale

    def header(self, arrows: tuple[str, str]) -> str:
        if self.direction == UP:
            return f"{self.label} {arrows[0]}"
        if self.direction == DOWN:
            return f"{self.label} {arrows[1]}"
        return self.label


def metric_info(task: str, metric: str) -> MetricInfo:
    """Human label, direction and scale factor of ``metric`` as written for ``task``."""
    name, suffix = metric, ""
    m = re.fullmatch(r"(.+?)\[(.+)\]", metric)
    if m:
        name, suffix = m.group(1), f" [{m.group(2)}]"
    per_traj = name.startswith("trajectory_")
    if per_traj:
        name = name[len("trajectory_"):]
    mode = ""
    for prefix, text in PREFIXES.items():
        if name.startswith(prefix):
            name, mode = name[len(prefix):], text
    label, direction = METRICS.get(name, (metric, NEUTRAL))
    if name not in METRICS:
        return MetricInfo(metric, NEUTRAL, 1.0)
    percent = name in FRACTIONS and (task, metric) not in tasks.percent_metrics()
    return MetricInfo(label + mode + (" per traj." if per_traj else "") + suffix,
                      direction, 100.0 if percent else 1.0)


def variant_name(variant: str) -> str:
    v = str(variant)
    fixed = {"base": "LLM, full context", "truncate": "LLM, truncated to budget",
             "no_context": "LLM, no context", "icae-pretrained": "ICAE, pre-trained",
             "icae-ft": "ICAE, fine-tuned", "llm-ft": "LLM, fine-tuned"}
    if v in fixed:
        return fixed[v]
    for prefix, text in (("icae-ft-", "ICAE, fine-tuned"), ("llm-ft-", "LLM, fine-tuned")):
        if v.startswith(prefix):
            ds = v[len(prefix):]
            known = {t.dataset: t.dataset_title for t in tasks.TASKS.values()}
            return f"{text} ({known.get(ds, ds)})"
    return v


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


@dataclass
class Table:
    """A table's content: key cells (strings) and per metric column mean / std / seeds."""

    name: str
    caption: str
    label: str
    keys: pd.DataFrame                      # Method, Mem, Rate, Eff. rate, Layout: those
                                            # that apply, one row per method
    columns: list[tuple[str, MetricInfo]]   # (column id, info)
    mean: pd.DataFrame                      # column id -> values on the shown scale
    std: pd.DataFrame
    seeds: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def _cell(self, i: int, col: str, decimals: int, pm: str) -> str:
        mean, std, n = self.mean.iloc[i][col], self.std.iloc[i][col], self.seeds.iloc[i][col]
        if _missing(mean):
            return ""
        text = f"{mean:.{decimals}f}"
        if not _missing(n) and n > 1 and not _missing(std):
            text += f"{pm}{std:.{decimals}f}"
        return text

    def best(self, decimals: int) -> pd.DataFrame:
        """True where a cell's mean, at the shown precision, is its column's best."""
        out = pd.DataFrame(False, index=self.mean.index, columns=self.mean.columns)
        for col, info in self.columns:
            if info.direction == NEUTRAL:
                continue
            shown = self.mean[col].round(decimals)
            if shown.notna().sum() < 2:
                continue
            target = shown.max() if info.direction == UP else shown.min()
            out[col] = shown == target
        return out

    def to_markdown(self, decimals: int = 2) -> str:
        best = self.best(decimals)
        frame = self.keys.copy()
        for col, info in self.columns:
            cells = []
            for i in range(len(frame)):
                text = self._cell(i, col, decimals, " ± ")
                cells.append(f"**{text}**" if text and best.iloc[i][col] else text or "–")
            frame[info.header(("↑", "↓"))] = cells
        frame = frame.map(lambda v: "–" if v in ("", None) else v)
        align = ["left"] * len(self.keys.columns) + ["right"] * len(self.columns)
        body = frame.to_markdown(index=False, colalign=align, disable_numparse=True)
        notes = f"\n{' '.join(self.notes)}\n" if self.notes else ""
        return f"**Table ({self.label}).** {self.caption}\n\n{body}\n{notes}"

    def to_latex(self, decimals: int = 2) -> str:
        best = self.best(decimals)
        frame = self.keys.map(lambda v: _tex(v) if v not in ("", None) else "--")
        for col, info in self.columns:
            cells = []
            for i in range(len(frame)):
                text = self._cell(i, col, decimals, r" $\pm$ ")
                cells.append(rf"\textbf{{{text}}}" if text and best.iloc[i][col]
                             else text or "--")
            frame[_tex(info.label) + _tex_arrow(info.direction)] = cells
        spec = "l" * len(self.keys.columns) + "r" * len(self.columns)
        caption = _tex(self.caption) + "".join(" " + _tex(n) for n in self.notes)
        styler = frame.style.hide(axis="index")
        return styler.to_latex(column_format=spec, hrules=True, caption=caption,
                               label=self.label, position="t", position_float="centering")

    def to_csv(self) -> str:
        out = self.keys.copy()
        for col, info in self.columns:
            header = info.header(("(higher is better)", "(lower is better)"))
            out[header] = self.mean[col].to_numpy()
            if (self.seeds[col] > 1).any():
                out[f"{header} std"] = self.std[col].to_numpy()
        if len(self.columns):
            out["seeds"] = self.seeds.max(axis=1).astype("Int64").to_numpy()
        return out.to_csv(index=False, float_format="%.10g")


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$"}


def _tex(text: Any) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_arrow(direction: int) -> str:
    return {UP: r" $\uparrow$", DOWN: r" $\downarrow$"}.get(direction, "")


def _fmt_num(value: Any, kind: str) -> str:
    if _missing(value):
        return ""
    if kind == "int":
        return str(int(value))
    return f"{float(value):g}" if kind == "rate" else f"{float(value):.2f}"


def _label(run: str, name: str) -> str:
    return "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", f"{run}-{name}").strip("-").lower()


def _method_keys(df: pd.DataFrame, collapse_finetuned: bool) -> pd.DataFrame:
    out = df.copy()
    if collapse_finetuned:
        out["variant"] = out["variant"].astype(str).str.replace(
            r"^(icae|llm)-ft-.*$", r"\1-ft", regex=True)
    for col in ("mem_size", "compression_rate", "position_layout"):
        out[col] = out[col].astype(object).where(out[col].notna(), "")
    return out


def build_table(long: pd.DataFrame, metric_columns: list[tuple[str, str]], *, name: str,
                caption: str, run: str, effective_rate: bool) -> Table:
    """Rows: methods; columns: ``(task, metric)`` pairs; values scaled per metric."""
    from icae.evaluation.aggregate import _layout_rank, _num_rank, _variant_rank

    collapse = name == "summary"
    col_ids = [f"{t}/{m}" for t, m in metric_columns]
    infos = [metric_info(t, m) for t, m in metric_columns]
    if len(set(metric_columns)) != len(metric_columns):
        raise ValueError(f"table {name}: a metric column appears twice")
    rows = []
    for (task, metric), cid, info in zip(metric_columns, col_ids, infos):
        sel = long[(long["task"] == task) & (long["metric"].astype(str) == metric)]
        sel = _method_keys(sel, collapse).assign(col=cid, shown=sel["value"] * info.factor)
        rows.append(sel)
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    keys = ["variant", "mem_size", "compression_rate", "position_layout"]
    df["seed"] = df["seed"].astype(object).where(df["seed"].notna(), "")
    per_seed = df.groupby(keys + ["col", "seed"], sort=False)["shown"].mean()
    g = per_seed.groupby(level=keys + ["col"], sort=False)
    stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
    wide = stats.unstack("col")
    index = wide.index.to_frame(index=False)
    order = sorted(range(len(index)), key=lambda i: (
        _variant_rank(index.iloc[i]["variant"]),
        _num_rank(index.iloc[i]["mem_size"] or None),
        _num_rank(index.iloc[i]["compression_rate"] or None),
        _layout_rank(index.iloc[i]["position_layout"] or None)))
    wide, index = wide.iloc[order], index.iloc[order].reset_index(drop=True)

    key_frame = pd.DataFrame({
        "Method": [variant_name(v) for v in index["variant"]],
        "Mem": [_fmt_num(v or None, "int") for v in index["mem_size"]],
        "Rate": [_fmt_num(v or None, "rate") for v in index["compression_rate"]],
    })
    if effective_rate and "compression_rate_effective" in long.columns:
        eff = _effective_rates(long, metric_columns[0][0] if metric_columns else None,
                               keys, collapse)
        key_frame["Eff. rate"] = [
            _fmt_num(eff.get(tuple(index.iloc[i][k] for k in keys)), "float")
            for i in range(len(index))]
        if not key_frame["Eff. rate"].astype(bool).any():
            key_frame = key_frame.drop(columns="Eff. rate")
    key_frame["Layout"] = [LAYOUT_NAMES.get(v, v) for v in index["position_layout"]]
    # Key columns that are blank for every row say nothing.
    key_frame = key_frame[[c for c in key_frame.columns
                           if c == "Method" or key_frame[c].astype(bool).any()]]

    def part(stat):
        frame = wide[stat].reindex(columns=col_ids) if len(wide) else pd.DataFrame(
            columns=col_ids)
        return frame.reset_index(drop=True)

    seeds = part("n").fillna(0)
    units = []
    if any(info.factor == 100.0 or (t, m) in tasks.percent_metrics()
           for (t, m), info in zip(metric_columns, infos)):
        units.append("scores in %")
    if any(info.label.startswith("Loss") for info in infos):
        units.append("loss in nats")
    notes = ["; ".join(units + ["bold: best per column"]).capitalize() + "."]
    if (seeds > 1).any().any():
        notes.append(f"Mean ± std over {int(seeds.max().max())} seeds.")
    if "Eff. rate" in key_frame.columns:
        notes.append("Rate: configured compression rate; Eff. rate: context tokens / memory "
                     "slots measured on the evaluated data.")
    return Table(name=name, caption=caption, label=_label(run, name), keys=key_frame,
                 columns=list(zip(col_ids, infos)), mean=part("mean"), std=part("std"),
                 seeds=seeds, notes=notes)


def _effective_rates(long: pd.DataFrame, task: str | None, keys: list[str],
                     collapse: bool) -> dict[tuple, float]:
    sub = long if task is None else long[long["task"] == task]
    sub = _method_keys(sub.dropna(subset=["compression_rate_effective"]), collapse)
    if sub.empty:
        return {}
    vals = pd.to_numeric(sub["compression_rate_effective"], errors="coerce")
    per_seed = sub.assign(v=vals).groupby(keys + ["seed"], dropna=False)["v"].mean()
    return per_seed.groupby(level=keys).mean().to_dict()


def paper_tables(long: pd.DataFrame, order: dict[str, list[str]], *, run: str,
                 model: str) -> list[Table]:
    """One table per task (its selected metrics, ``order``: task -> metrics) and a
    summary table of each task's first metric."""
    from icae.evaluation.aggregate import _dataset_rank

    dataset_of = tasks.dataset_of_task()
    names = sorted((t for t in order if order[t]),
                   key=lambda t: _dataset_rank(dataset_of.get(t, t)))
    tables = []
    for task in names:
        sub = long[long["task"] == task]
        n = pd.to_numeric(sub.loc[sub["metric"].isin(order[task]), "n"], errors="coerce")
        size = f" ({int(n.max())} examples)" if n.notna().any() else ""
        known = tasks.TASKS.get(task)
        caption = (f"{known.caption if known else task}{size}. Base model {model}, "
                   f"run {run}.")
        tables.append(build_table(sub, [(task, m) for m in order[task]], name=task,
                                  caption=caption, run=run, effective_rate=True))
    if names:
        caption = ("Summary: the headline metric of every task ("
                   + ", ".join(f"{tasks.title(t)}: "
                               f"{metric_info(t, order[t][0]).label}" for t in names)
                   + f"). Base model {model}, run {run}. Fine-tuned rows: each model "
                   "fine-tuned on the task's own training data.")
        summary = build_table(long, [(t, order[t][0]) for t in names], name="summary",
                              caption=caption, run=run, effective_rate=False)
        summary.columns = [(cid, MetricInfo(f"{_known_title(cid.split('/')[0])} "
                                            f"{info.label}".strip(), info.direction,
                                            info.factor))
                           for cid, info in summary.columns]
        tables.append(summary)
    return tables


def _known_title(task: str) -> str:
    return tasks.TASKS[task].title if task in tasks.TASKS else ""


def short_model_name(base_model: str) -> str:
    """``Qwen/Qwen3-8B`` stays; a local path or ``pypi:pkg/dir/file.gguf`` becomes the
    file's stem (captions name the model, not where it was read from)."""
    text = str(base_model)
    if text.startswith("pypi:") or "/" in text.strip("/") and (
            text.startswith(("/", ".", "~")) or text.endswith((".gguf", ".safetensors"))):
        stem = re.split(r"[\\/]", text.rstrip("/"))[-1]
        return re.sub(r"\.(gguf|safetensors)$", "", stem)
    return text
