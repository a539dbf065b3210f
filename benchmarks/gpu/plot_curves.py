"""Learning curves of the pre-training runs: AE and LM loss against examples seen.

    python benchmarks/gpu/plot_curves.py docs/results/2026-12-01-h200 docs/results/smollm2-135m-curves.png
    python benchmarks/gpu/plot_curves.py docs/results/2026-12-02-h200 \
        docs/results/smollm2-135m-curves-2026-12-02.png 40k
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
        "s128-dec": "120-token spans, decoder LoRA",
        "s128-frozen": "120-token spans, frozen decoder",
        "s128-frozen-scaled": "120-token spans, frozen, memory rescaled",
        "s448-dec": "448-token spans, decoder LoRA"}


def main(folder: str, out: str, ae_only: str = "20k") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, label in RUNS.items():
        path = Path(folder) / f"pretrain-{name}.log.csv"
        if not path.is_file():
            continue
        df = pd.read_csv(path)
        train = df.dropna(subset=["ae_loss"])
        line, = axes[0].plot(train["examples_seen"], train["ae_loss"], label=f"{label}: AE")
        if "lm_loss" in df:
            lm = df.dropna(subset=["lm_loss"])
            axes[0].plot(lm["examples_seen"], lm["lm_loss"], ls="--", color=line.get_color(),
                         label=f"{label}: LM")
        bleu = df.dropna(subset=["eval_ae_bleu1"])
        per_step = (train["examples_seen"] / train["step"]).median()
        axes[1].plot(bleu["step"] * per_step, bleu["eval_ae_bleu1"], marker="o",
                     color=line.get_color(), label=label)
    axes[0].set(xlabel="training examples seen", ylabel="loss (nats / token)",
                title=f"AE and LM loss (AE-only until {ae_only} examples)")
    axes[1].set(xlabel="training examples seen", ylabel="AE BLEU-1 (16 held-out spans)",
                title="reconstruction of held-out eval spans", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(Path(out).with_suffix(suffix), dpi=130)


if __name__ == "__main__":
    main(*sys.argv[1:4])
