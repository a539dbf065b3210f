"""Learning curves of the pre-training runs: AE, LM (and recall) loss against examples seen.

    python benchmarks/gpu/plot_curves.py docs/results/2026-12-01-h200 docs/results/smollm2-135m-curves.png
    python benchmarks/gpu/plot_curves.py docs/results/2026-12-02-h200 \
        docs/results/smollm2-135m-curves-2026-12-02.png 40k
    python benchmarks/gpu/plot_curves.py docs/results/2026-12-02-h200,docs/results/2026-12-07c-h100 \
        docs/results/smollm2-135m-curves-2026-12-07c.png 40k --log \
        --runs=s128-dec,s128-epl,s128-linspace,s128-epl-x8
    python benchmarks/gpu/plot_curves.py docs/results/2026-12-07d-h100 \
        docs/results/smollm2-135m-recall-2026-12-07d.png none --log --runs=recall

FOLDERS is a comma-separated list; a run that continues another (``CONTINUES``: started
from its final parameters with ``pretrain.init_checkpoint``, counting its examples from 0)
is drawn after it, in its colour, from where it stopped. ``--runs=a,b`` draws only those
runs (and what continues them); ``--log`` puts the losses on a log scale.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

RUNS = {"epl-dec": "EPL, decoder LoRA", "epl-frozen": "EPL, frozen decoder",
        "linspace-dec": "linspace, decoder LoRA",
        # 2026-12-02: LoRA r16 on every linear layer, lr 1e-3
        "s128-dec": "120-token spans, decoder LoRA (4x EPL; shipped stage 1)",
        "s128-frozen": "120-token spans, frozen decoder",
        "s128-frozen-scaled": "120-token spans, frozen, memory rescaled",
        "s448-dec": "448-token spans, decoder LoRA",
        # 2026-12-07, third lease: the 2026-12-02 recipe with that day's code
        "s128-epl": "4x EPL (rerun of s128-dec)", "s128-linspace": "4x linspace",
        "s128-epl-x8": "8x EPL",
        # 2026-12-07, fourth lease: from the shipped checkpoint, AE/LM/recall 25/25/50
        "recall": "recall pre-training"}
# run -> the run whose final parameters it started from
CONTINUES = {"s128-linspace-more": "s128-linspace", "s128-epl-x8-more": "s128-epl-x8",
             "s128-epl-x8-more2": "s128-epl-x8-more", "s128-epl-more": "s128-dec"}


def _find(folders: list[str], name: str) -> Path | None:
    for folder in folders:
        path = Path(folder) / f"pretrain-{name}.log.csv"
        if path.is_file():
            return path
    return None


def main(folders: str, out: str, ae_only: str = "20k", *flags: str) -> None:
    folders = folders.split(",")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    only = [f.split("=", 1)[1].split(",") for f in flags if f.startswith("--runs=")]
    colour, offset = {}, {}
    for name in (only[0] if only else list(RUNS)) + list(CONTINUES):
        path = _find(folders, name)
        if path is None:
            continue
        parent = CONTINUES.get(name)
        if parent is not None and parent not in offset:
            continue
        df = pd.read_csv(path)
        train = df.dropna(subset=["ae_loss"])
        start = offset.get(parent, 0) if parent else 0
        offset[name] = start + train["examples_seen"].max()
        label = None if parent else RUNS[name]
        kw = {"color": colour[parent]} if parent else {}
        line, = axes[0].plot(start + train["examples_seen"], train["ae_loss"],
                             label=label and f"{label}: AE", **kw)
        colour[name] = line.get_color()
        if "lm_loss" in df:
            lm = df.dropna(subset=["lm_loss"])
            axes[0].plot(start + lm["examples_seen"], lm["lm_loss"], ls="--",
                         color=colour[name], label=label and f"{label}: LM")
        if "recall_loss" in df:
            recall = df.dropna(subset=["recall_loss"])
            axes[0].plot(start + recall["examples_seen"], recall["recall_loss"], ls=":",
                         color=colour[name], label=label and f"{label}: recall")
        bleu = df.dropna(subset=["eval_ae_bleu1"])
        per_step = (train["examples_seen"] / train["step"]).median()
        axes[1].plot(start + bleu["step"] * per_step, bleu["eval_ae_bleu1"], marker="o",
                     color=colour[name], label=label)
        if parent:
            for ax in axes:
                ax.axvline(start, color=colour[name], lw=0.6, ls=":")
    warm = "" if ae_only == "none" else f" (AE-only until {ae_only} examples)"
    axes[0].set(xlabel="training examples seen", ylabel="loss (nats / token)",
                title=f"training loss by objective{warm}")
    if "--log" in flags:
        axes[0].set_yscale("log")
    axes[1].set(xlabel="training examples seen", ylabel="AE BLEU-1 (16 held-out spans)",
                title="reconstruction of held-out eval spans", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(Path(out).with_suffix(suffix), dpi=130)


if __name__ == "__main__":
    main(*sys.argv[1:])
