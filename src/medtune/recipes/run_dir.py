"""A stage's output dir: whether it is new, finished or resumable, and the lineage that marks it done.

A dir holds a run once it has checkpoints or a ``lineage.json``; the lineage is written last, so its
presence means the run finished. Example::

    state = output_state(cfg, Path(cfg.output), overwrite=False)   # new / replace / resume / complete
    resume = resume_point(Path(cfg.output)) if state == "resume" else None
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from medtune.config import StageConfig, save_config
from medtune.config.loader import read_yaml
from medtune.errors import MedtuneError

LINEAGE = "lineage.json"
CHECKPOINTS = "checkpoints"
COMPLETE = "medtune-complete"  # written into a checkpoint after all its files
TENSORBOARD = "tensorboard"  # event files of train.report_to: tensorboard
LOSS_PLOT = "loss.png"
log = logging.getLogger("medtune")
def output_state(cfg: StageConfig, out: Path, overwrite: bool) -> str:
    """Return ``new``, ``replace``, ``resume`` or ``complete``; refuse a dir holding another run.

    A dir holds a run once it has checkpoints or a lineage; a config alone (a run that failed
    before training) does not count. Nothing is written here.
    """
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"output '{out}' exists and is not a directory")
    holds_run = (out / LINEAGE).is_file() or (out / CHECKPOINTS).is_dir()
    if not holds_run:
        # a run that failed before its first checkpoint leaves its config and event files only
        others = [p.name for p in out.iterdir() if p.name not in ("config.yaml", TENSORBOARD)] if out.exists() else []
        if others and not overwrite:
            raise MedtuneError(f"output '{out}' holds other files ({others[0]}, …); choose an empty "
                               "dir or pass --overwrite to replace it")
        return "replace" if out.exists() else "new"
    if overwrite:
        return "replace"
    saved = out / "config.yaml"
    if not (saved.is_file() and read_yaml(saved) == cfg.to_dict()):
        raise MedtuneError(
            f"output '{out}' already holds a different run; choose another output or pass --overwrite"
        )
    return "complete" if (out / LINEAGE).is_file() else "resume"


def claim_output(cfg: StageConfig, out: Path, replace: bool) -> None:
    """Create ``out`` (emptied first when replacing) and write the resolved config into it."""
    if replace:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")


def is_main_process() -> bool:
    """Return True in a single process, or in rank 0 of a torchrun / accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def resume_point(out: Path):
    """Return the newest complete checkpoint of the run in ``out`` (partial ones are removed)."""
    if is_main_process():
        drop_partial_checkpoints(out / CHECKPOINTS)
    found = last_checkpoint(out / CHECKPOINTS)
    if found:
        log.info("resuming from %s", found)
    return found


def _complete_checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if (p / COMPLETE).is_file()), key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(checkpoints_dir: Path) -> str | None:
    """Return the newest complete checkpoint under ``checkpoints_dir`` (None if there is none)."""
    done = _complete_checkpoints(Path(checkpoints_dir)) if Path(checkpoints_dir).is_dir() else []
    return str(done[-1]) if done else None


def drop_partial_checkpoints(checkpoints_dir: Path) -> list[str]:
    """Delete checkpoints a crash left without their completion marker; return their names."""
    dropped = []
    for p in Path(checkpoints_dir).glob("checkpoint-*"):
        if p.is_dir() and not (p / COMPLETE).is_file():
            shutil.rmtree(p, ignore_errors=True)
            dropped.append(p.name)
    for name in dropped:
        log.warning("removed incomplete checkpoint %s (the run was killed while saving it)", name)
    return dropped


def library_versions() -> dict:
    """Return the versions of the libraries a run depends on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    names = ("medtune", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def write_lineage(cfg: StageConfig, out: Path, files, stats, metrics: dict, started: float) -> None:
    """Write ``lineage.json`` last: its presence marks a finished run."""
    lineage = {
        "stage": cfg.stage,
        "parent_model": cfg.model.path,
        "template": cfg.model.template,
        "data": [_lineage_input(f) for f in files],
        "tokenization": {
            "examples": stats.examples, "rows": stats.rows, "truncated": stats.truncated,
            "skipped": stats.skipped, "label_tokens": stats.real_tokens, "from_cache": stats.from_cache,
            "masks_verified": stats.verified,  # conversations whose learned tokens were checked against their replies
        },
        "chain": lineage_chain(cfg.model.path),
        "libraries": library_versions(),
        "metrics": metrics,
        "wall_time_s": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = out / (LINEAGE + ".tmp")
    tmp.write_text(json.dumps(lineage, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out / LINEAGE)


def _lineage_input(f) -> dict:
    """One input in the lineage: its hash (a folder's or hf dataset's too) and, for a datasets
    input, its kind and revision (the datasets fingerprint / resolved revision)."""
    entry = {"path": f.path, "format": f.format, "sha256": f.sha256, "records": f.n_records,
             "skipped": f.skipped}
    if getattr(f, "kind", "file") != "file":
        entry.update(kind=f.kind, revision=f.revision)
    return entry


def lineage_chain(parent: str) -> list[dict]:
    """Return the ancestry of a model dir, oldest first: each earlier medtune stage with its
    parent model and data hashes, back to the base model (a dir without a lineage, or a hub id)."""
    path = Path(parent) / LINEAGE
    if not path.is_file():
        return []
    lineage = json.loads(path.read_text(encoding="utf-8"))
    entry = {
        "stage": lineage.get("stage"), "output": str(Path(parent)), "parent_model": lineage.get("parent_model"),
        "data": [{"path": d["path"], "sha256": d["sha256"]} for d in lineage.get("data", [])],
    }
    return [*lineage.get("chain", []), entry]


def read_log_history(out: Path) -> list:
    """Return the trainer log history saved with a finished run (empty if none)."""
    path = Path(out) / "log_history.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def write_log_history(out: Path, history: list) -> None:
    """Save the trainer log history next to the outputs (read back by ``read_log_history``)."""
    (Path(out) / "log_history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
