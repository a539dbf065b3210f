"""Peak memory of data preparation and training as the prepared corpus grows (issue 15).

For each corpus size (``--sizes``, tokens of the real Qwen3 tokenizer) the script

1. writes a synthetic pre-training corpus: documents of words drawn (seeded) from the
   words of ``shared/data/pretrain/corpus.jsonl.gz``, as many as make about that many
   tokens (the ratio of tokens to words is measured on a sample first);
2. runs ``python -m icae prepare-data`` on it for each ``--num-proc`` (wall time,
   tokens/s from summary.json, peak memory of the process and its tokenizer workers);
3. runs a short ``python -m icae pretrain`` (``--steps`` steps, a tiny random
   Qwen3-shaped model with the Qwen3 tokenizer) and measures its peak memory, data-loader
   workers included (``--loader-workers``);

and, for each ``--squad-scales`` factor, prepares SQuAD's train subset repeated that many
times (question ids made unique) and runs a short ``python -m icae finetune`` on it. With
``--eager`` the same fine-tuning data is also encoded the way training did before (every
record read into a list and encoded up front) in a process of its own, for comparison.

Memory is sampled every 50 ms from /proc for the whole process tree (the command, its
tokenizer or data-loader workers), as proportional set sizes, so that pages a forked
worker shares with its parent count once: ``anon`` (Pss_Anon: the processes' own heap,
what grows with Python objects), ``file`` (Pss_File + Pss_Shmem: mapped file pages, e.g.
the memory-mapped Arrow files, model weights and shared libraries: clean page cache that
the kernel can drop, shared by every process that maps the same file) and the peak of
their sum; ``hwm`` is the main process' own peak RSS (VmHWM, anonymous and file pages).
Everything is written under ``--work`` and deleted at the end unless ``--keep``.
Results: a JSON file and a Markdown table on stdout.

Example (docs/results/data-streaming.md)::

    python benchmarks/data_rss.py --sizes 10e6 100e6 --num-proc 1 2 --squad-scales 1 10 \\
        --eager --out docs/results/data-streaming.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "assets" / "tokenizers" / "qwen3"
CORPUS = SHARED / "data" / "pretrain" / "corpus.jsonl.gz"
SQUAD_TRAIN = SHARED / "data" / "squad" / "train-subset-v1.1.json.gz"
SQUAD_DEV = SHARED / "data" / "squad" / "dev-v1.1.json.gz"
WORDS_PER_DOC = 1500
SEED = 0


# -- measuring --------------------------------------------------------------------------

def _memory_kib(pid: int) -> dict[str, int]:
    """Pss_Anon / Pss_File / Pss_Shmem (/proc/<pid>/smaps_rollup) and VmHWM (status)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("Pss_Anon", "Pss_File", "Pss_Shmem"):
                    out[key] = int(value.split()[0])
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    out["VmHWM"] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return [pid]


def run_measured(cmd: list[str], log: Path, env: dict | None = None,
                 checkout: Path = REPO) -> dict:
    """Run ``cmd`` (output to ``log``) in ``checkout`` (whose icae ``-m icae`` runs),
    sampling the memory of its process tree."""
    peak = {"anon": 0, "file": 0, "total": 0, "hwm": 0, "processes": 1}
    done = threading.Event()
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        # this checkout's icae, whatever the installed one is
        env = {**os.environ, "PYTHONPATH": str(checkout), **(env or {})}
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=checkout,
                                env=env)

        def sample():
            while not done.is_set():
                pids = _tree(proc.pid)
                mem = [_memory_kib(p) for p in pids]
                anon = sum(m.get("Pss_Anon", 0) for m in mem)
                file = sum(m.get("Pss_File", 0) + m.get("Pss_Shmem", 0) for m in mem)
                peak["anon"] = max(peak["anon"], anon)
                peak["file"] = max(peak["file"], file)
                peak["total"] = max(peak["total"], anon + file)
                peak["hwm"] = max(peak["hwm"], mem[0].get("VmHWM", 0))
                peak["processes"] = max(peak["processes"], len(pids))
                done.wait(0.05)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    mib = lambda kib: round(kib / 1024, 1)
    return {"wall_s": round(wall, 1), "hwm_mib": mib(peak["hwm"]),
            "anon_mib": mib(peak["anon"]), "file_mib": mib(peak["file"]),
            "total_mib": mib(peak["total"]), "processes": peak["processes"]}


# -- inputs -------------------------------------------------------------------------------

def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def corpus_words() -> list[str]:
    words: list[str] = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
        for line in fh:
            words.extend(json.loads(line)["text"].split())
    return words


def tokens_per_word(tok, words: list[str]) -> float:
    import numpy as np

    rng = np.random.default_rng(SEED + 1)
    docs = [" ".join(words[i] for i in rng.integers(0, len(words), WORDS_PER_DOC))
            for _ in range(200)]
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    return sum(map(len, ids)) / (200 * WORDS_PER_DOC)


def write_corpus(path: Path, tokens: int, words: list[str], ratio: float) -> int:
    """Documents of seeded random corpus words, about ``tokens`` tokens in all; returns
    the number of documents."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    vocab = np.array(words, dtype=object)
    n_docs = max(1, round(tokens / ratio / WORDS_PER_DOC))
    with open(path, "w", encoding="utf-8") as fh:
        for d in range(n_docs):
            text = " ".join(vocab[rng.integers(0, len(vocab), WORDS_PER_DOC)])
            fh.write(json.dumps({"id": f"syn{d}", "text": text}) + "\n")
    return n_docs


def write_squad(path: Path, scale: int) -> int:
    """SQuAD's train subset repeated ``scale`` times (ids made unique); questions."""
    with gzip.open(SQUAD_TRAIN, "rt", encoding="utf-8") as fh:
        base = json.load(fh)
    data, n = [], 0
    for r in range(scale):
        for art in base["data"]:
            paras = []
            for p in art["paragraphs"]:
                qas = [{**qa, "id": f"{qa['id']}-{r}"} for qa in p["qas"]]
                n += len(qas)
                paras.append({"context": p["context"], "qas": qas})
            data.append({"title": art["title"], "paragraphs": paras})
    path.write_text(json.dumps({"data": data, "version": "1.1"}))
    return n


def write_model(folder: Path) -> Path:
    from icae.testing import tiny_model

    tok = _tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = tiny_model("qwen3", vocab_size=len(tok), hidden_size=64, layers=2, seed=SEED)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# -- the runs -----------------------------------------------------------------------------

def _icae(*args: str) -> list[str]:
    return [sys.executable, "-m", "icae", *args]


def _common(work: Path, model: Path, name: str) -> list[str]:
    return [f"model.model_dir={model}", f"model.base_model={model}", "model.mem_size=32",
            "model.lora_r=8", "model.lora_alpha=16", f"data.prepared_dir={work / name}",
            "data.progress=false", f"output_root={work / 'runs'}", f"run_name={name}"]


def _train_args(stage: str, steps: int, loader_workers: int) -> list[str]:
    return [f"{stage}.max_steps={steps}", f"{stage}.per_device_train_batch_size=2",
            f"{stage}.save_steps={10 * steps}", f"{stage}.logging_steps={steps}",
            f"{stage}.progress=false", f"{stage}.dataloader_num_workers={loader_workers}",
            f"{stage}.max_length=2048"]


def pretrain_size(work: Path, model: Path, tokens: int, words, ratio, num_procs, steps,
                  loader_workers, compare: Path | None = None,
                  train_overrides: tuple[str, ...] = ()) -> dict:
    name = f"pretrain-{tokens // 10 ** 6}M"
    corpus = work / f"{name}.jsonl"
    t0 = time.perf_counter()
    n_docs = write_corpus(corpus, tokens, words, ratio)
    row: dict = {"target_tokens": tokens, "documents": n_docs,
                 "corpus_mib": round(corpus.stat().st_size / 2 ** 20, 1),
                 "generate_s": round(time.perf_counter() - t0, 1), "prepare": []}
    data = [f"data.build=[pretrain]", f"data.pretrain.sources=[{{path: {corpus}}}]",
            # every document is kept (the budget is never reached): the prepared tokens
            # are the corpus' tokens
            "data.pretrain.token_num=1000000000000", "data.pretrain.min_len=256",
            "data.pretrain.eval_size=16"]
    for p in num_procs:
        m = run_measured(_icae("prepare-data", *_common(work, model, name), *data,
                               f"data.num_proc={p}"), work / f"{name}-prepare-{p}.log")
        summary = json.loads((work / name / "pretrain" / "summary.json").read_text())
        m.update(num_proc=p, tokens_per_s=summary["tokens_per_s"],
                 tokenized_tokens=summary["tokenized_tokens"])
        row["prepare"].append(m)
        row["prepared_tokens"] = summary["train_documents"]["tokens"]
        row["train_arrow_mib"] = round(
            (work / name / "pretrain" / "train.arrow").stat().st_size / 2 ** 20, 1)
    if compare is not None:  # the same corpus through another version's prepare-data
        m = run_measured(_icae("prepare-data", *_common(work, model, f"{name}-compare"),
                               *data), work / f"{name}-prepare-compare.log", checkout=compare)
        m["files_mib"] = {str(f.relative_to(work / f"{name}-compare")): round(
            f.stat().st_size / 2 ** 20, 1) for f in (work / f"{name}-compare").rglob("*")
            if f.is_file()}
        row["prepare_compare"] = m
        shutil.rmtree(work / f"{name}-compare")
    corpus.unlink()
    row["train"] = run_measured(
        _icae("pretrain", *_common(work, model, name), "data.pretrain.min_len=256",
              *_train_args("pretrain", steps, loader_workers), *train_overrides),
        work / f"{name}-train.log")
    shutil.rmtree(work / name)
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    return row


EAGER = """
import sys
from icae.config import load_config
from icae.models import build_model
from icae.training.examples import encode_records, load_records
cfg = load_config(None, sys.argv[1:])
model = build_model(cfg.model)
# the way training read a set before: every record in a list, every example encoded
records = list(load_records(cfg, "squad", "train"))
examples, stats = encode_records(model, cfg, "squad", records, cfg.finetune.max_length)
print(len(records), "records", stats.examples, "examples", flush=True)
"""


def squad_scale(work: Path, model: Path, scale: int, steps: int, loader_workers: int,
                eager: bool) -> dict:
    name = f"squad-x{scale}"
    src = work / f"{name}.json"
    questions = write_squad(src, scale)
    data = ["data.build=[squad]", f"data.squad.train_file={src}",
            f"data.squad.eval_file={SQUAD_DEV}", "data.squad.eval_size=100"]
    row: dict = {"scale": scale, "questions": questions}
    row["prepare"] = run_measured(_icae("prepare-data", *_common(work, model, name), *data),
                                  work / f"{name}-prepare.log")
    row["train_arrow_mib"] = round(
        (work / name / "squad" / "train.arrow").stat().st_size / 2 ** 20, 1)
    src.unlink()
    args = [*_common(work, model, name), "finetune.dataset=squad",
            *_train_args("finetune", steps, loader_workers)]
    row["train"] = run_measured(_icae("finetune", *args), work / f"{name}-train.log")
    if eager:
        row["eager"] = run_measured([sys.executable, "-c", EAGER, *args],
                                    work / f"{name}-eager.log")
    shutil.rmtree(work / name)
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    return row


def markdown(results: dict) -> str:
    lines = ["| prepared tokens | train.arrow | prepare: procs, wall, tokens/s, peak anon / "
             "file MiB | pretrain: wall, hwm, peak anon / file MiB (processes) |",
             "|---:|---:|---|---|"]
    for r in results["pretrain"]:
        prep = "; ".join(f"{p['num_proc']} proc: {p['wall_s']} s, {p['tokens_per_s']:,} tok/s, "
                         f"{p['anon_mib']} / {p['file_mib']}" for p in r["prepare"])
        t = r["train"]
        if "prepare_compare" in r:
            c = r["prepare_compare"]
            prep += f"; compared checkout: {c['wall_s']} s, {c['anon_mib']} / {c['file_mib']}"
        lines.append(f"| {r['prepared_tokens']:,} | {r['train_arrow_mib']} MiB | {prep} | "
                     f"{t['wall_s']} s, {t['hwm_mib']}, {t['anon_mib']} / {t['file_mib']} "
                     f"({t['processes']}) |")
    if results["squad"]:
        lines += ["", "| SQuAD x | questions | train.arrow | prepare: wall, peak anon / file "
                  "MiB | finetune (lazy): wall, hwm, anon / file MiB | eager encoding: "
                  "wall, hwm, anon / file MiB |", "|---:|---:|---:|---|---|---|"]
        for r in results["squad"]:
            p, t, e = r["prepare"], r["train"], r.get("eager")
            eager = (f"{e['wall_s']} s, {e['hwm_mib']}, {e['anon_mib']} / {e['file_mib']}"
                     if e else "")
            lines.append(f"| {r['scale']} | {r['questions']:,} | {r['train_arrow_mib']} MiB | "
                         f"{p['wall_s']} s, {p['anon_mib']} / {p['file_mib']} | {t['wall_s']} s, "
                         f"{t['hwm_mib']}, {t['anon_mib']} / {t['file_mib']} | {eager} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="*", type=float, default=[10e6, 100e6],
                    help="corpus sizes in tokens")
    ap.add_argument("--num-proc", nargs="+", type=int, default=[1, 2],
                    help="data.num_proc values to prepare with")
    ap.add_argument("--squad-scales", nargs="*", type=int, default=[1, 10])
    ap.add_argument("--eager", action="store_true",
                    help="also measure encoding the SQuAD sets up front (the old way)")
    ap.add_argument("--compare-checkout", type=Path, default=None,
                    help="also prepare each corpus with the icae of this checkout (e.g. the "
                         "version before this change)")
    ap.add_argument("--pretrain-override", action="append", default=[],
                    help="more key=value overrides of the pretrain runs, e.g. "
                         "data.pretrain.lm_ratio=0 (repeatable)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per run")
    ap.add_argument("--loader-workers", type=int, default=2,
                    help="dataloader_num_workers of the training runs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/icae-data-rss"))
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--keep", action="store_true", help="keep --work")
    args = ap.parse_args(argv)
    if not TOKENIZER.is_dir() or not CORPUS.is_file():
        raise SystemExit(f"needs {TOKENIZER} and {CORPUS} (the shared data)")
    sys.path.insert(0, str(REPO))
    args.work.mkdir(parents=True, exist_ok=True)
    model = write_model(args.work / "model")
    results: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:],
                     "pretrain": [], "squad": []}
    try:
        if args.sizes:
            words = corpus_words()
            ratio = tokens_per_word(_tokenizer(), words)
            results["tokens_per_word"] = round(ratio, 4)
            for size in args.sizes:
                results["pretrain"].append(pretrain_size(
                    args.work, model, int(size), words, ratio, args.num_proc, args.steps,
                    args.loader_workers, args.compare_checkout, tuple(args.pretrain_override)))
                print(json.dumps(results["pretrain"][-1]), flush=True)
        for scale in args.squad_scales:
            results["squad"].append(squad_scale(args.work, model, scale, args.steps,
                                                args.loader_workers, args.eager))
            print(json.dumps(results["squad"][-1]), flush=True)
    finally:
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
