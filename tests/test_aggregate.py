"""Aggregation of metric files into paper tables and plots (synthetic metric CSVs)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from icae.evaluation.aggregate import aggregate, read_metrics, wide_table

COLUMNS = ["run", "variant", "model_type", "baseline", "base_model", "task", "dataset",
           "mem_size", "compression_rate", "position_layout", "checkpoint", "metric", "value",
           "n"]
DATASET = {"ae": "pretrain", "qa": "squad", "repoqa": "repoqa", "trajectories": "trajectories"}


def value_for(*key) -> float:
    """A distinct, reproducible number per cell, so a wrong lookup cannot pass."""
    return round(sum((i + 1) * ord(c) for i, c in enumerate("/".join(map(str, key)))) % 9973
                 / 99.73, 4)


def write_metrics(root: Path, branch: str, variant: str, task: str, metrics: list[str], *,
                  model_type="icae", baseline="none", mem="", rate="", layout="",
                  seed=None, with_variant_column=True) -> Path:
    path = root / "r" / branch / "eval" / variant / task / "metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = COLUMNS if with_variant_column else [c for c in COLUMNS if c != "variant"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for metric in metrics:
            row = {"run": "r", "variant": variant, "model_type": model_type,
                   "baseline": baseline, "base_model": "tiny", "task": task,
                   "dataset": DATASET[task], "mem_size": mem, "compression_rate": rate,
                   "position_layout": layout, "checkpoint": "", "metric": metric,
                   "value": value_for(branch, variant, task, metric), "n": 8}
            w.writerow({k: row[k] for k in cols})
    return path


def sweep(root: Path, seeds=(42,), mems=(8, 16), rates=(2.0, 4.0),
          layouts=("default", "epl")) -> list[Path]:
    """Metric files laid out as the workflow writes them."""
    files = []
    for seed in seeds:
        for mem in mems:
            for rate in rates:
                r = f"{rate:g}"
                for layout in layouts:
                    b = f"m{mem}-r{r}-{layout}-s{seed}"
                    kw = dict(mem=mem, rate=rate, layout=layout)
                    files.append(write_metrics(root, b, "icae-pretrained", "ae",
                                               ["bleu1", "token_accuracy"], **kw))
                    files.append(write_metrics(root, b, "icae-pretrained", "qa",
                                               ["exact_match", "f1"], **kw))
                    files.append(write_metrics(root, b, "icae-ft-squad", "qa",
                                               ["exact_match", "f1"], **kw))
                files.append(write_metrics(root, f"m{mem}-r{r}-s{seed}", "truncate", "qa",
                                           ["exact_match", "f1"], model_type="llm",
                                           baseline="truncate", mem=mem, rate=rate))
        for variant, baseline in (("base", "none"), ("no_context", "no_context"),
                                  ("llm-ft-squad", "none")):
            files.append(write_metrics(root, f"llm-s{seed}", variant, "qa",
                                       ["exact_match", "f1"], model_type="llm",
                                       baseline=baseline))
    return files


def test_long_table_holds_every_row_with_variant_and_seed(tmp_path):
    files = sweep(tmp_path)
    long = read_metrics(files)
    expected_rows = sum(len(pd.read_csv(f)) for f in files)
    assert len(long) == expected_rows
    assert set(long["variant"]) == {"icae-pretrained", "icae-ft-squad", "truncate", "base",
                                    "no_context", "llm-ft-squad"}
    assert set(long["seed"].dropna()) == {42}
    # Settings that do not apply are blank.
    llm = long[long["model_type"] == "llm"]
    assert llm["position_layout"].isna().all()
    assert llm[llm["variant"] != "truncate"]["mem_size"].isna().all()
    assert (llm[llm["variant"] == "truncate"]["mem_size"].notna()).all()
    # Values are the files' values.
    for f in files:
        for row in pd.read_csv(f).itertuples():
            match = long[(long["source"] == str(f)) & (long["metric"] == row.metric)]
            assert match["value"].tolist() == [pytest.approx(row.value)]


def test_wide_table_rows_columns_and_values(tmp_path):
    files = sweep(tmp_path)
    paths = aggregate(files, tmp_path / "tables", decimals=3)
    wide = pd.read_csv(paths["wide"])
    # rows: variant x model type x mem x rate x layout
    icae_rows = wide[wide["model_type"] == "icae"]
    assert len(icae_rows) == 2 * 2 * 2 * 2  # 2 variants x 2 mems x 2 rates x 2 layouts
    assert len(wide[wide["variant"] == "truncate"]) == 4  # 2 mems x 2 rates, no layout
    assert len(wide[wide["variant"] == "base"]) == 1
    assert list(wide.columns[:5]) == ["variant", "model_type", "mem_size", "compression_rate",
                                      "position_layout"]
    assert {"pretrain/bleu1", "pretrain/token_accuracy", "squad/exact_match",
            "squad/f1"} <= set(wide.columns)
    # Column order: data sets in pipeline order, metrics in file order.
    metric_cols = [c for c in wide.columns if "/" in c]
    assert metric_cols == ["pretrain/bleu1", "pretrain/token_accuracy", "squad/exact_match",
                           "squad/f1"]
    # Row order: base, truncate, no_context, llm-ft, icae-pretrained, icae-ft.
    order = list(dict.fromkeys(wide["variant"]))
    assert order == ["base", "truncate", "no_context", "llm-ft-squad", "icae-pretrained",
                     "icae-ft-squad"]
    # Every cell is the number in the corresponding metrics file.
    row = wide[(wide["variant"] == "icae-ft-squad") & (wide["mem_size"] == 16)
               & (wide["compression_rate"] == 2.0) & (wide["position_layout"] == "epl")]
    assert len(row) == 1
    assert row["squad/f1"].item() == pytest.approx(
        value_for("m16-r2-epl-s42", "icae-ft-squad", "qa", "f1"))
    assert math.isnan(row["pretrain/bleu1"].item())
    base = wide[wide["variant"] == "base"]
    assert base["squad/exact_match"].item() == pytest.approx(
        value_for("llm-s42", "base", "qa", "exact_match"))
    assert base["mem_size"].isna().all() and base["position_layout"].isna().all()

    # The paper tables: one per task and a summary.
    for name in ("ae", "qa", "summary"):
        for ext in ("tex", "md", "csv"):
            assert paths[f"{name}.{ext}"].is_file(), (name, ext)
    assert "metrics_wide.md" not in {p.name for p in paths.values()}

    plots = tmp_path / "tables" / "plots"
    for stem in ("qa_vs_compression_rate", "qa_vs_mem_size", "ae_vs_compression_rate"):
        for ext in ("png", "pdf", "svg"):
            assert (plots / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)


def test_seeds_are_averaged_with_std(tmp_path):
    files = sweep(tmp_path, seeds=(1, 2), mems=(8,), rates=(4.0,), layouts=("epl",))
    long = read_metrics(files)
    wide = wide_table(long)
    key = ("icae-ft-squad", "icae", 8, 4.0, "epl")
    v1 = value_for("m8-r4-epl-s1", "icae-ft-squad", "qa", "f1")
    v2 = value_for("m8-r4-epl-s2", "icae-ft-squad", "qa", "f1")
    assert wide.loc[key, ("squad", "f1", "mean")] == pytest.approx((v1 + v2) / 2)
    assert wide.loc[key, ("squad", "f1", "std")] == pytest.approx(abs(v1 - v2) / math.sqrt(2))
    assert wide.loc[key, ("squad", "f1", "seeds")] == 2
    paths = aggregate(files, tmp_path / "t", decimals=2)
    md = paths["qa.md"].read_text()
    assert f"{(v1 + v2) / 2:.2f} ± {abs(v1 - v2) / math.sqrt(2):.2f}" in md
    assert "over 2 seeds" in md
    assert "$\\pm$" in paths["qa.tex"].read_text()


def test_variant_and_seed_from_path_when_columns_lack_them(tmp_path):
    f = write_metrics(tmp_path, "m8-r4-epl-s7", "icae-ft-squad", "qa", ["f1"], mem=8, rate=4,
                      layout="epl", with_variant_column=False)
    long = read_metrics([f])
    assert long["variant"].tolist() == ["icae-ft-squad"]
    assert long["seed"].tolist() == [7]


def test_metric_selection_and_decimals(tmp_path):
    files = sweep(tmp_path, mems=(8,), rates=(4.0,), layouts=("epl",))
    paths = aggregate(files, tmp_path / "t", metrics=["f1"], decimals=1)
    wide = pd.read_csv(paths["wide"])
    assert [c for c in wide.columns if "/" in c] == ["squad/f1"]
    assert f"{value_for('llm-s42', 'base', 'qa', 'f1'):.1f}" in paths["qa.md"].read_text()
    # The long table keeps every metric.
    assert set(pd.read_csv(paths["long"])["metric"]) == {"bleu1", "token_accuracy",
                                                         "exact_match", "f1"}


def test_metric_selection_per_task(tmp_path):
    files = sweep(tmp_path, mems=(8,), rates=(4.0,), layouts=("epl",))
    long = read_metrics(files)
    wide = wide_table(long, {"qa": ["f1", "exact_match"], "ae": ["token_accuracy"]})
    assert list(dict.fromkeys((d, m) for d, m, _ in wide.columns)) == [
        ("pretrain", "token_accuracy"), ("squad", "f1"), ("squad", "exact_match")]
    # A task left out of the mapping shows all its metrics.
    wide = wide_table(long, {"qa": ["f1"]})
    assert list(dict.fromkeys((d, m) for d, m, _ in wide.columns)) == [
        ("pretrain", "bleu1"), ("pretrain", "token_accuracy"), ("squad", "f1")]


def test_training_loss_plot(tmp_path):
    logs = []
    for branch, stage in (("m8-r4-epl-s42", "pretrain"), ("m8-r4-epl-s42", "finetune/squad-icae"),
                          ("llm-s42", "finetune/squad-llm")):
        path = tmp_path / "r" / branch / stage / "final" / "log.csv"
        path.parent.mkdir(parents=True)
        rows = ["step,loss,ae_loss,lm_loss,learning_rate,epoch,eval_loss"]
        rows += [f"{s},{3 - 0.1 * s},,,1e-4,0.1,{'' if s % 5 else 2.5}" for s in range(1, 11)]
        path.write_text("\n".join(rows) + "\n")
        logs.append(str(path))
    files = sweep(tmp_path, mems=(8,), rates=(4.0,), layouts=("epl",))
    paths = aggregate(files, tmp_path / "t", logs=logs + [f"custom={logs[0]}"])
    assert paths["training_loss"].stat().st_size > 1000


def test_bad_inputs_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_metrics([tmp_path / "missing.csv"])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column"):
        read_metrics([bad])


def test_cli(tmp_path):
    files = sweep(tmp_path, mems=(8,), rates=(4.0,), layouts=("epl",))
    out = tmp_path / "cli-tables"
    proc = subprocess.run(
        [sys.executable, "-m", "icae", "aggregate", "run_name=r", "workflow.tables.decimals=1",
         "--out", str(out), "--inputs", *map(str, files)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("metrics_long.csv", "metrics_wide.csv", "qa.tex", "qa.md", "qa.csv",
                 "summary.tex", "plots/qa_by_method.pdf"):
        assert (out / name).is_file(), name
    proc = subprocess.run([sys.executable, "-m", "icae", "aggregate", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no metric files" in proc.stderr


@pytest.mark.parametrize("mutate, needle", [
    (lambda t: "", "the metrics file is empty"),
    (lambda t: t[: len(t) - 7], "no newline: the file is truncated"),
    (lambda t: t.splitlines()[0] + "\n", "a header but no rows"),
    (lambda t: t + 'x,"unclosed\n', "malformed CSV"),
    (lambda t: t.replace(",8\n", ",eight\n", 1), r":2: column 'n' is 'eight', not an integer"),
    (lambda t: t.replace(",8\n", ",\n", 1), r":2: column 'n' is '', not an integer"),
    (lambda t: t + t.splitlines()[1] + "\n", "metric 'f1' appears 2 times"),
])
def test_broken_metric_files_are_named(tmp_path, mutate, needle):
    f = write_metrics(tmp_path, "m8-r4-epl-s7", "icae-ft-squad", "qa", ["f1", "exact_match"],
                      mem=8, rate=4, layout="epl")
    f.write_text(mutate(f.read_text()))
    with pytest.raises(ValueError, match=needle) as exc:
        aggregate([str(f)], tmp_path / "t")
    assert str(f) in str(exc.value)
    assert not (tmp_path / "t" / "metrics_wide.csv").exists()


def test_value_garbage_is_named(tmp_path):
    f = write_metrics(tmp_path, "m8-r4-epl-s7", "icae-ft-squad", "qa", ["f1"], mem=8, rate=4,
                      layout="epl")
    lines = f.read_text().splitlines()
    cells = lines[1].split(",")
    cells[-2] = "abc"
    f.write_text("\n".join([lines[0], ",".join(cells)]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.csv:2: column 'value' is 'abc'"):
        read_metrics([f])


def test_two_results_for_one_variant_are_not_averaged(tmp_path):
    a = write_metrics(tmp_path / "a", "m8-r4-epl-s7", "icae-ft-squad", "qa", ["f1"], mem=8,
                      rate=4, layout="epl")
    b = write_metrics(tmp_path / "b", "m8-r4-epl-s7", "icae-ft-squad", "qa", ["f1"], mem=8,
                      rate=4, layout="epl")
    with pytest.raises(ValueError, match="two results for one key .*variant=icae-ft-squad.*"
                                         "seed=7.*distinct seeds"):
        read_metrics([a, b])
    c = write_metrics(tmp_path / "c", "m8-r4-epl-s8", "icae-ft-squad", "qa", ["f1"], mem=8,
                      rate=4, layout="epl")
    assert len(read_metrics([a, c])) == 2  # replicas: distinct seeds
