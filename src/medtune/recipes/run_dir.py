"""A stage's output dir: whether it is new, finished or resumable, and the lineage that marks it done.

A dir holds a run once it has checkpoints or a lineage (pending or final). The writes of a run are
ordered so that a kill at any point leaves a state the next run with the same config handles
without ``--overwrite``:

1. ``config.yaml`` and ``run_state.json`` (the data files' sha256) when the dir is claimed;
2. checkpoints while training (each marked complete after its files): a kill -> ``resume``;
3. the weights, tokenizer and ``log_history.json``: a kill -> ``resume`` from the last checkpoint
   (which, when it is the final one, trains no further step);
4. ``lineage.pending.json``, then the checkpoints are removed, then it is renamed ``lineage.json``:
   a kill in between -> ``finish`` (nothing retrains; the record is completed).

Example::

    state = output_state(cfg, Path(cfg.output), overwrite=False)  # new / replace / resume / finish / complete
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
PENDING = "lineage.pending.json"  # the lineage, written before the checkpoints are removed
RUN_STATE = "run_state.json"  # the data files' sha256, written when the dir is claimed
CHECKPOINTS = "checkpoints"
COMPLETE = "medtune-complete"  # written into a checkpoint after all its files
TENSORBOARD = "tensorboard"  # event files of train.report_to: tensorboard
LOSS_PLOT = "loss.png"
log = logging.getLogger("medtune")


def output_state(cfg: StageConfig, out: Path, overwrite: bool) -> str:
    """Return ``new``, ``replace``, ``resume``, ``finish`` or ``complete``; refuse a dir holding
    another run.

    A dir holds a run once it has checkpoints or a lineage (pending or final); a config alone (a
    run that failed before training) does not count, nor do the leftovers of a run of this same
    config that never checkpointed. Nothing is written here.
    """
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"output '{out}' exists and is not a directory")
    holds_run = any((out / name).exists() for name in (LINEAGE, PENDING, CHECKPOINTS))
    if not holds_run:
        # a run that failed before its first checkpoint leaves its config, state and event files only
        leftovers = ("config.yaml", RUN_STATE, TENSORBOARD)
        others = [p.name for p in out.iterdir() if p.name not in leftovers] if out.exists() else []
        if others and not overwrite and not (_same_config(cfg, out) and (out / RUN_STATE).is_file()):
            raise MedtuneError(f"output '{out}' holds other files ({others[0]}, …); choose an empty "
                               "dir or pass --overwrite to replace it")
        return "replace" if out.exists() else "new"
    if overwrite:
        return "replace"
    if not _same_config(cfg, out):
        raise MedtuneError(
            f"output '{out}' already holds a different run; choose another output or pass --overwrite"
        )
    if (out / LINEAGE).is_file():
        return "complete"
    return "finish" if (out / PENDING).is_file() else "resume"


def _same_config(cfg: StageConfig, out: Path) -> bool:
    saved = out / "config.yaml"
    return saved.is_file() and read_yaml(saved) == cfg.to_dict()


def claim_output(cfg: StageConfig, out: Path, replace: bool, files=()) -> None:
    """Create ``out`` (emptied first when replacing) and write the resolved config into it, with
    the sha256 of each data file (``files``: read data, ``.path`` / ``.sha256``) that a resumed
    run checks."""
    if replace:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    # plain files are re-hashed on resume; a save_to_disk folder or an hf id keeps its
    # fingerprint / revision in lineage.json instead
    state = {"data": {f.path: f.sha256 for f in files if getattr(f, "kind", "file") == "file"}}
    (out / RUN_STATE).write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")


def check_data_unchanged(out: Path) -> None:
    """Refuse to resume the run in ``out`` when a data file it started on is gone or changed
    (a run claimed before data hashes were recorded is not checked)."""
    from medtune.data.readers.files import file_sha256

    path = out / RUN_STATE
    if not path.is_file():
        return
    recorded = json.loads(path.read_text(encoding="utf-8")).get("data", {})
    for name, digest in recorded.items():
        if not Path(name).is_file():
            why = "is gone"
        elif file_sha256(name) != digest:
            why = "changed"
        else:
            continue
        raise MedtuneError(f"{name}: {why} since the interrupted run in '{out}' started; restore it, "
                           "or pass --overwrite to train from scratch on the data as it is now")


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


def write_lineage(cfg: StageConfig, out: Path, files, stats, metrics: dict, started: float,
                  mixture: dict | None = None) -> None:
    """Write ``lineage.json`` last, through a pending copy written before the checkpoints are
    removed (:func:`finish_record`): its presence marks a finished run. ``mixture``: what a
    data.mixture stage drew from each source, per phase and per epoch."""
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
        **({"mixture": mixture} if mixture else {}),
        "chain": lineage_chain(cfg.model.path),
        "libraries": library_versions(),
        "metrics": metrics,
        "wall_time_s": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = out / (PENDING + ".tmp")
    tmp.write_text(json.dumps(lineage, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out / PENDING)
    finish_record(out)


def finish_record(out: Path) -> dict:
    """Remove the checkpoints of the run in ``out``, then turn its pending lineage into
    ``lineage.json`` (the run is finished); return the lineage. Safe to repeat after a kill."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # resumable state is not needed once done
    (out / PENDING).replace(out / LINEAGE)
    return json.loads((out / LINEAGE).read_text(encoding="utf-8"))


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
