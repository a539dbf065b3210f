"""SQuAD fine-tuning curves: training loss against examples seen, every ``ft-*.log.csv``
of the given result folders (one line per run, labelled by folder and run name).

    python benchmarks/gpu/plot_finetune.py docs/results/smollm2-135m-squad-ft-2026-12-02c.png \
        docs/results/2026-12-02b-h200 docs/results/2026-12-02c-h200
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

LABELS = {"llm": "LLM-FT lr 2e-4 (full context)",
          "icae-shipped": "ICAE-FT lr 2e-4, stopped at 200 s",
          "icae-lr2e-4": "ICAE-FT lr 2e-4",
          "icae-lr1e-3": "ICAE-FT lr 1e-3",
          "icae-s2x128-lr1e-3": "ICAE-FT lr 1e-3 after two-segment pre-training",
          "icae-lr1e-3-e4": "ICAE-FT lr 1e-3, 4 epochs",
          "icae-lr1e-3-s43": "ICAE-FT lr 1e-3, seed 43",
          "icae-lr2e-3": "ICAE-FT lr 2e-3",
          "llm-lr1e-3": "LLM-FT lr 1e-3 (full context)",
          "llm-lr2e-4": "LLM-FT lr 2e-4 (full context)",
          # 2026-12-07, fourth lease
          "icae-e2": "ICAE-FT lr 1e-3 from the 2026-12-07 checkpoint",
          "icae-recall-e2": "ICAE-FT lr 1e-3 after recall pre-training"}


def main(out: str, *folders: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for folder in folders:
        for path in sorted(Path(folder).glob("ft-*.log.csv")):
            name = path.name[len("ft-"):-len(".log.csv")]
            train = pd.read_csv(path).dropna(subset=["loss", "examples_seen"])
            label = f"{LABELS.get(name, name)} ({Path(folder).name})"
            ax.plot(train["examples_seen"], train["loss"], label=label)
    ax.set_xlabel("fine-tuning examples seen")
    ax.set_ylabel("training loss (nats/token)")
    # Result folders are named date + lease letter + card (2026-12-07d-h100).
    ax.set_title("SQuAD fine-tuning, SmolLM2-135M ("
                 + ", ".join(Path(f).name for f in folders) + ")", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(Path(out).with_suffix(suffix), dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:])
