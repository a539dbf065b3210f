"""The summaries of an evaluation: the metric rows, ``summary.json`` and ``metrics.csv``.

Rows are ``(metric, value, n)``: the means of the task's metrics over all examples (those
in its ``percent`` set scaled to percent), the task's breakdowns (``name[key=value]``
rows, :meth:`icae.tasks.base.Task.breakdowns`), then the token accounting and timings
that every task shares. Files are written by :func:`icae.evaluation.run.evaluate`.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from icae.evaluation import metrics as M

CSV_COLUMNS = ("run", "variant", "model_type", "baseline", "base_model", "task", "dataset",
               "mem_size", "compression_rate", "compression_rate_configured",
               "compression_rate_effective", "position_layout", "checkpoint", "metric",
               "value", "n")

# Metrics reported per task (before the common token and timing metrics).

# Units of the rows every task has (the task's own: Task.units).
COMMON_UNITS = {
    "compression_rate": ("effective rate measured on the evaluated examples: context tokens "
                         "/ decoder positions standing for them (= compression_rate_effective)"),
    "contexts_compressed_fraction": "fraction of contexts ICAE compresses (the rest stay text)",
    "*_time_s": "seconds, summed over batches",
    "latency_s": "mean per example (batch time / batch size)",
    "prefill_time_s": "seconds of prompt prefill (included in generate_time_s)",
    "decode_time_s": "seconds of token decoding (included in generate_time_s)",
    "memory_cache_*": "contexts served from / encoded into the memory cache (ICAE)",
    "kv_cache_peak_bytes": "largest decoder KV cache of one trajectory (incremental turns)",
    "tokens_per_second": "tokens decoded (every row, up to its batch's budget) / generate time",
}


def finite(x: Any) -> Any:
    """NaN / inf -> None (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def mean(values) -> tuple[float | None, int]:
    """The mean of the values that are not None or NaN, and their number."""
    vals = [float(v) for v in values
            if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, 0
    return math.fsum(vals) / len(vals), len(vals)


def ratio(num: float, den: float) -> float | None:
    """A compression rate ``num / den``; None where it is not finite."""
    rate = M.compression_stats([num], [den])["overall_rate"]
    return rate if math.isfinite(rate) else None


def summarize(task, records: list[dict], gen: dict, wall: float,
              policy) -> list[tuple[str, Any, int]]:
    """Metric rows ``(metric, value, n)`` of ``task`` (a :class:`~icae.tasks.base.Task`)
    over the prediction records; ``gen`` holds the run's totals and timings."""
    n = len(records)

    def means(names, recs, suffix=""):
        rows = []
        for name in names:
            value, k = mean(r["metrics"].get(name) for r in recs)
            if value is not None and name in task.percent:
                value *= 100.0
            rows.append((f"{name}{suffix}", value, k))
        return rows

    rows: list[tuple[str, Any, int]] = [("num_examples", n, n)]
    rows += means(task.metrics, records)
    rows += task.breakdowns(records, means)

    ctx = sum(r["context_tokens"] for r in records)
    mem = sum(r["memory_tokens"] for r in records)
    rows.append(("context_tokens_total", ctx, n))
    rows.append(("memory_tokens_total", mem, n))
    if policy.is_icae:
        rows.append(("memory_slots_total", sum(r["memory_slots"] for r in records), n))
    rows.append(("compression_rate", ratio(ctx, mem), n))
    contexts = sum(r.get("contexts", 0) for r in records)
    rows.append(("contexts_compressed_fraction",
                 sum(r.get("contexts_compressed", 0) for r in records) / contexts
                 if contexts else None, n))
    rows.append(("prompt_tokens_mean", mean(r["prompt_tokens"] for r in records)[0], n))

    generated = sum(r["generated_tokens"] for r in records)
    rows.append(("generated_tokens_total", generated, n))
    rows.append(("compress_time_s", gen["compress_s"], n))
    rows.append(("generate_time_s", gen["generate_s"], n))
    rows.append(("prefill_time_s", gen.get("prefill_s"), n))
    rows.append(("decode_time_s", gen.get("decode_s"), n))
    cache = gen.get("memory_cache") or {}
    if cache:
        rows.append(("memory_cache_hits", cache["hits"], n))
        rows.append(("memory_cache_misses", cache["misses"], n))
    if gen.get("kv_cache_peak_bytes"):
        rows.append(("kv_cache_peak_bytes", gen["kv_cache_peak_bytes"], n))
    rows.append(("latency_s", mean(r["timings"]["latency_s"] for r in records)[0], n))
    rows.append(("tokens_per_second", M.throughput(gen["decoded_tokens"], gen["generate_s"]),
                 n))
    if task.teacher_forced:
        rows.append(("teacher_forced_time_s",
                     math.fsum(r["timings"]["teacher_forced_s"] for r in records), n))
    rows.append(("wall_time_s", wall, n))
    return [(name, finite(v), k) for name, v, k in rows]


def build_summary(cfg, model_cfg, task, data_path, out_dir, metrics, meta, model) -> dict:
    """``summary.json`` of an evaluation of ``task`` (the run adds the markers)."""
    e = cfg.evaluation
    is_icae = model_cfg.model_type == "icae"
    return {
        "run": cfg.run_name,
        "variant": e.variant,
        "task": task.name,
        "dataset": task.dataset,
        "data_file": str(data_path),
        "model_type": model_cfg.model_type,
        "baseline": e.baseline,
        "base_model": model_cfg.base_model,
        "checkpoint": e.checkpoint,
        "checkpoint_meta": {k: v for k, v in (meta or {}).items()
                            if k not in ("tensors", "base_fingerprint")} or None,
        "mem_size": model_cfg.mem_size if is_icae or e.baseline == "truncate" else None,
        "mean_compression_rate": (model_cfg.mean_compression_rate
                                  if is_icae or e.baseline == "truncate" else None),
        "position_layout": model_cfg.position_layout if is_icae else None,
        "compression_rate_configured": configured_rate(cfg, model_cfg),
        "compression_rate_effective": effective_rate(metrics),
        "num_examples": next(v for k, v, _ in metrics if k == "num_examples"),
        "metrics": {k: v for k, v, _ in metrics},
        "n": {k: c for k, _, c in metrics},
        "units": {**task.units, **COMMON_UNITS},
        "generation": {"decoding": "greedy", "kv_cache": True, "batch_size": e.batch_size,
                       "kv_cache_mode": e.decoding, "memory_cache": e.memory_cache,
                       "incremental_turns": e.incremental_turns if task.turns else None,
                       "max_new_tokens": (task.max_new_tokens(e) if task.budgeted
                                          else "reference length + 1")},
        "device": str(model.device),
        "output_dir": str(out_dir),
        "files": {"predictions": "predictions.jsonl", "metrics": "metrics.csv",
                  "config": "config.yaml"},
    }


def configured_rate(cfg, model_cfg) -> float | None:
    """``model.mean_compression_rate`` where it sets the budget (ICAE, truncate baseline)."""
    if model_cfg.model_type == "icae" or cfg.evaluation.baseline == "truncate":
        return model_cfg.mean_compression_rate
    return None


def effective_rate(metrics) -> float | None:
    """The rate measured on the data: all context tokens of the evaluated examples over the
    decoder positions that stand for them (memory slots, plus the tokens of contexts kept
    as text). Below the configured rate when contexts are short or stay text."""
    return next((v for k, v, _ in metrics if k == "compression_rate"), None)


def metrics_csv(cfg, model_cfg, task, metrics) -> str:
    """Long format; ``mem_size``, ``compression_rate`` and ``position_layout`` describe
    ICAE's configuration and are blank for the LLM (the truncate baseline keeps
    ``mem_size`` and ``compression_rate``: they set its budget).

    ``compression_rate_configured`` repeats the configured rate (same blanks as
    ``compression_rate``, kept for readers of that column); ``compression_rate_effective``
    is the rate measured on the evaluated examples (:func:`effective_rate`; 1.0 for the
    full-context LLM, blank when no context is kept), on every row of the run."""
    e = cfg.evaluation
    is_icae = model_cfg.model_type == "icae"
    budget = is_icae or e.baseline == "truncate"
    common = {
        "run": cfg.run_name, "variant": e.variant, "model_type": model_cfg.model_type,
        "baseline": e.baseline, "base_model": model_cfg.base_model, "task": task.name,
        "dataset": task.dataset,
        "mem_size": model_cfg.mem_size if budget else "",
        "compression_rate": model_cfg.mean_compression_rate if budget else "",
        "compression_rate_configured": model_cfg.mean_compression_rate if budget else "",
        "compression_rate_effective": ("" if effective_rate(metrics) is None
                                       else effective_rate(metrics)),
        "position_layout": model_cfg.position_layout if is_icae else "",
        "checkpoint": e.checkpoint or "",
    }
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for name, value, n in metrics:
        writer.writerow({**common, "metric": name, "value": "" if value is None else value,
                         "n": n})
    return buf.getvalue()

