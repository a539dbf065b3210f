"""SQuAD fine-tuning curves: training loss against examples seen, ICAE-FT and LLM-FT.

    python benchmarks/gpu/plot_finetune.py docs/results/2026-12-02b-h200 \
        docs/results/smollm2-135m-squad-ft-2026-12-02.png
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

RUNS = {"llm": "LLM-FT (full context)", "icae-shipped": "ICAE-FT (from the shipped checkpoint)"}


def main(folder: str, out: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, label in RUNS.items():
        path = Path(folder) / f"ft-{name}.log.csv"
        if not path.is_file():
            continue
        train = pd.read_csv(path).dropna(subset=["loss", "examples_seen"])
        ax.plot(train["examples_seen"], train["loss"], label=label)
    ax.set_xlabel("fine-tuning examples seen")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("SQuAD fine-tuning, SmolLM2-135M (one H200, 2026-12-02)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(Path(out).with_suffix(suffix), dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:])
