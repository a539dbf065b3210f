"""Progress lines for log files (icae.progress)."""

from __future__ import annotations

import io
import os

from icae.progress import LineProgress, StepClock, progress, progress_line, quiet_third_party_bars


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_line_progress_throttled_lines_with_elapsed_rate_eta():
    clock, out = FakeClock(), io.StringIO()
    with LineProgress(400, "generate", unit="ex", every_s=30, stream=out, clock=clock) as bar:
        for _ in range(40):
            clock.t += 2.0  # 10 examples every 2 s
            bar.update(10)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # one line per 30 s (80 s in all: at 30 s and 60 s) and one at the end
    assert len(lines) == 3, lines
    assert lines[0] == "generate: 150/400 ex (37.5%), elapsed 30s, 5 ex/s, ETA 50s"
    assert lines[-1] == "generate: 400/400 ex (100.0%), elapsed 1m20s, 5 ex/s"


def test_progress_off_a_terminal_is_lines_and_scaled_units():
    bar = progress(10, "x")  # pytest captures stderr: not a terminal
    assert isinstance(bar, LineProgress)
    assert progress_line("pretrain", 2_500_000, 10_000_000, 100, "tok", scale=True) == (
        "pretrain: 2.5M/10M tok (25.0%), elapsed 1m40s, 25k tok/s, ETA 5m00s")
    assert progress(10, "x", enabled=False).update(3) is None


def test_step_clock_counts_from_the_resumed_step():
    clock = FakeClock()
    sc = StepClock(start_step=100, max_steps=200, clock=clock)
    clock.t = 50.0
    assert sc.line(150, {"trained_tokens": 50_000}) == (
        "elapsed 50s, 1 steps/s, 1k tok/s, ETA 50s")


def test_third_party_bars_off_in_log_files(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    quiet_third_party_bars(io.StringIO())
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
