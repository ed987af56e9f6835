"""An adversarial corpus for the ``medtune`` command line: broken and odd inputs, I/O faults, and
outputs aimed at inputs. Each case builds its files in a fresh directory, runs the real CLI
in-process (``medtune.cli.main.main``), and records what a user would see.

Used by ``tests/e2e/test_adversarial.py`` (one test per case) and ``bench/adversarial_counts.py``
(the counts for BENCHMARKS.md)::

    PYTHONPATH=src:. python bench/adversarial_counts.py

A case passes when it exits with the expected code, prints no traceback, and leaves every file it
protects (its inputs and any previous output) byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GOOD = [{"instruction": f"问题{i}：头痛怎么办？", "output": f"回答{i}：多休息，必要时就医。"} for i in range(6)]


@dataclass
class Setup:
    """What one case runs: the argv, the files it must not change, the exit code it must give."""

    argv: list[str]
    protect: list[Path]
    expect: int = 2
    check: Callable[[str, str], str | None] | None = None  # (stdout, stderr) -> failure or None
    cleanup: Callable[[], None] | None = None
    skip: str | None = None
    cwd: Path | None = None  # run from here (relative paths as a user types them)
    hide: tuple[str, ...] = ()  # modules made unimportable for the run (a missing extra)


@dataclass
class Outcome:
    name: str
    code: int | None = None
    expect: int = 2
    traceback: bool = False
    damaged: list[str] = field(default_factory=list)
    problem: str | None = None
    skipped: str | None = None
    stderr: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (
            self.code == self.expect and not self.traceback and not self.damaged and not self.problem)


@dataclass
class Context:
    """Shared, lazily built things a case may need: the tiny model and a LoRA adapter on it."""

    tiny: Path
    scratch: Path
    _adapter: Path | None = None

    def model(self, d: Path) -> Path:
        """A private copy of the tiny model in case dir ``d`` (a case may aim an output at it)."""
        import shutil

        return Path(shutil.copytree(self.tiny, d / "model"))

    def adapter(self, d: Path) -> Path:
        """A private copy, in case dir ``d``, of a LoRA adapter on the tiny model."""
        import shutil

        if self._adapter is None:
            self._adapter = make_adapter(self.tiny, self.scratch / "adapter")
        return Path(shutil.copytree(self._adapter, d / "adapter"))


def make_adapter(base: Path, out: Path) -> Path:
    """A small untrained LoRA adapter on ``base``, saved with its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------ writers


def jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def good(d: Path, name: str = "in.jsonl") -> Path:
    return jsonl(d / name, GOOD)


def sha(path: Path) -> dict[str, str]:
    """sha256 of ``path`` (a file, or every file under a directory), keyed by relative name."""
    if path.is_symlink() and not path.exists():
        return {str(path): "symlink:" + os.readlink(path)}
    if path.is_dir():
        return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(path.rglob("*")) if p.is_file()}
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {}


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str, read_only: bool = False):
    """Mount a small tmpfs on ``where`` (root only); yield the skip reason or None."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield "needs root to mount a small tmpfs"
        return
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        yield f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, check=False)


# ------------------------------------------------------------------------------------- cases
# Each builder takes (case dir, Context) and returns a Setup.

CASES: dict[str, Callable[[Path, Context], Setup]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _root_skip() -> str | None:
    return "running as root: file permissions are not enforced" if os.geteuid() == 0 else None


# data convert ---------------------------------------------------------------------------------

@case
def convert_out_is_input(d, ctx):
    src = good(d)
    return Setup(["data", "convert", str(src), "-o", str(src)], [src])


@case
def convert_report_is_input(d, ctx):
    src = good(d)
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl"), "--report", str(src)], [src])


@case
def convert_out_through_symlink_is_input(d, ctx):
    src = good(d)
    (d / "link.jsonl").symlink_to(src)
    return Setup(["data", "convert", str(src), "-o", str(d / "link.jsonl")], [src])


@case
def convert_nothing_written_keeps_previous_output(d, ctx):
    bad = jsonl(d / "bad.jsonl", [{"instruction": "", "output": ""}] * 3)  # read, every one skipped
    out = good(d, "out.jsonl")
    return Setup(["data", "convert", str(bad), "-o", str(out)], [bad, out])


@case
def convert_unreadable_input(d, ctx):
    src = good(d)
    src.chmod(0)
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [], skip=_root_skip(),
                 cleanup=lambda: src.chmod(0o644))


@case
def convert_read_only_output_dir(d, ctx):
    src = good(d)
    ro = d / "ro"
    stack = contextlib.ExitStack()
    reason = stack.enter_context(mounted_tmpfs(ro, "1m", read_only=True))
    return Setup(["data", "convert", str(src), "-o", str(ro / "out.jsonl")], [src], skip=reason,
                 cleanup=stack.close)


@case
def convert_disk_full(d, ctx):
    src = jsonl(d / "big.jsonl", [{"instruction": f"问题{i}" * 20, "output": "回答" * 200}
                                  for i in range(400)])
    full = d / "full"
    stack = contextlib.ExitStack()
    reason = stack.enter_context(mounted_tmpfs(full, "64k"))
    previous = None
    if reason is None:
        previous = good(full, "out.jsonl")  # a previous good result on the small disk
    return Setup(["data", "convert", str(src), "-o", str(full / "out.jsonl"), "--workers", "1"],
                 [src] + ([previous] if previous else []), skip=reason, cleanup=stack.close)


@case
def convert_directory_as_output(d, ctx):
    src = good(d)
    (d / "outdir").mkdir()
    return Setup(["data", "convert", str(src), "-o", str(d / "outdir")], [src])


@case
def convert_directory_as_input(d, ctx):
    (d / "indir").mkdir()
    return Setup(["data", "convert", str(d / "indir"), "-o", str(d / "out.jsonl")], [])


@case
def convert_missing_input(d, ctx):
    return Setup(["data", "convert", str(d / "nope.jsonl"), "-o", str(d / "out.jsonl")], [])


@case
def convert_symlink_loop_input(d, ctx):
    (d / "a.jsonl").symlink_to(d / "b.jsonl")
    (d / "b.jsonl").symlink_to(d / "a.jsonl")
    return Setup(["data", "convert", str(d / "a.jsonl"), "-o", str(d / "out.jsonl")], [])


@case
def convert_symlink_loop_output(d, ctx):
    src = good(d)
    (d / "a.jsonl").symlink_to(d / "b.jsonl")
    (d / "b.jsonl").symlink_to(d / "a.jsonl")
    return Setup(["data", "convert", str(src), "-o", str(d / "a.jsonl")], [src])


@case
def convert_corrupt_parquet(d, ctx):
    src = d / "bad.parquet"
    src.write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src])


@case
def convert_truncated_parquet(d, ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = d / "cut.parquet"
    pq.write_table(pa.table({"instruction": ["a"] * 50, "output": ["b"] * 50}), src)
    src.write_bytes(src.read_bytes()[:-30])
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src])


@case
def convert_deeply_nested_json(d, ctx):
    src = d / "deep.json"
    src.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src])


@case
def convert_deeply_nested_jsonl_line_is_skipped(d, ctx):
    src = good(d)
    with open(src, "a", encoding="utf-8") as f:
        f.write('{"instruction": ' + "[" * 200_000 + "]" * 200_000 + ', "output": "x"}\n')
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl"), "--workers", "1"], [src],
                 expect=0)


@case
def convert_unknown_encoding(d, ctx):
    src = good(d)
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl"), "--encoding", "utf-99"], [src])


@case
def convert_binary_garbage(d, ctx):
    src = d / "garbage.jsonl"
    src.write_bytes(os.urandom(4096))
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src])


@case
def convert_empty_file(d, ctx):
    src = d / "empty.jsonl"
    src.write_bytes(b"")
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src])


@case
def convert_json_scalar(d, ctx):
    src = d / "n.json"
    src.write_text("42", encoding="utf-8")
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src])


def _encoded(d: Path, encoding: str, name: str) -> Path:
    src = d / name
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in GOOD)
    src.write_bytes(text.encode(encoding))  # "utf-16" / "utf-32" write a BOM
    return src


def _wrote(n: int, out: Path):
    def check(stdout, stderr):
        if not out.is_file():
            return f"{out} not written"
        got = sum(1 for line in out.read_text(encoding="utf-8").splitlines() if line.strip())
        return None if got == n else f"{got} records written, expected {n}"
    return check


@case
def convert_utf16_bom_is_read(d, ctx):
    src = _encoded(d, "utf-16", "u16.jsonl")
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src], expect=0,
                 check=_wrote(len(GOOD), d / "out.jsonl"))


@case
def convert_utf16_bom_json_array_is_read(d, ctx):
    src = d / "u16.json"
    src.write_bytes(json.dumps(GOOD, ensure_ascii=False).encode("utf-16"))
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src], expect=0,
                 check=_wrote(len(GOOD), d / "out.jsonl"))


@case
def convert_utf32_bom_is_read(d, ctx):
    src = _encoded(d, "utf-32", "u32.jsonl")
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src], expect=0,
                 check=_wrote(len(GOOD), d / "out.jsonl"))


@case
def convert_gb18030_is_read(d, ctx):
    src = _encoded(d, "gb18030", "gb.jsonl")
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl")], [src], expect=0,
                 check=_wrote(len(GOOD), d / "out.jsonl"))


@case
def convert_long_first_line_is_read(d, ctx):
    rows = [{"instruction": "长" * 700_000, "output": "答"}] + GOOD  # first line > 2 MiB
    src = jsonl(d / "long.jsonl", rows)
    return Setup(["data", "convert", str(src), "-o", str(d / "out.jsonl"), "--workers", "1"], [src],
                 expect=0, check=_wrote(len(rows), d / "out.jsonl"))


# other data commands ----------------------------------------------------------------------------

@case
def clean_out_is_input(d, ctx):
    src = good(d)
    return Setup(["data", "clean", str(src), "-o", str(src)], [src])


@case
def clean_report_is_input(d, ctx):
    src = good(d)
    return Setup(["data", "clean", str(src), "-o", str(d / "out.jsonl"), "--report", str(src)], [src])


@case
def clean_report_is_output(d, ctx):
    src = good(d)
    return Setup(["data", "clean", str(src), "-o", str(d / "out.jsonl"), "--report", str(d / "out.jsonl")],
                 [src])


@case
def mix_out_is_input(d, ctx):
    a, b = good(d, "a.jsonl"), good(d, "b.jsonl")
    return Setup(["data", "mix", str(a), str(b), "-o", str(a)], [a, b])


@case
def mix_out_is_input_not_yet_unified(d, ctx):
    a = d / "a.json"
    a.write_text(json.dumps(GOOD, ensure_ascii=False), encoding="utf-8")
    return Setup(["data", "mix", str(a), "-o", str(a)], [a])


@case
def split_out_dir_holds_the_input(d, ctx):
    src = good(d, "train.jsonl")
    return Setup(["data", "split", str(src), "--val", "2", "-o", str(d)], [src])


@case
def split_out_is_a_file(d, ctx):
    src = good(d)
    other = good(d, "other.jsonl")
    return Setup(["data", "split", str(src), "--val", "2", "-o", str(other)], [src, other])


@case
def mix_then_split_leaks_nothing(d, ctx):
    """The README's sequence: mix with upsampling, then split; no record on both sides."""
    from medtune.cli.main import main

    small = jsonl(d / "small.jsonl", [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(25)])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["-q", "data", "mix", str(small), "--total", "500", "-o", str(d / "mix.jsonl")]) == 0
    warned = "repeated 20x" in err.getvalue()

    def no_leak(stdout, stderr):
        train = set((d / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines())
        val = set((d / "out" / "validation.jsonl").read_text(encoding="utf-8").splitlines())
        if not warned:
            return "data mix did not warn about 20x upsampling"
        return f"{len(train & val)} records on both sides" if train & val else None
    return Setup(["data", "split", str(d / "mix.jsonl"), "--val", "0.1", "-o", str(d / "out")],
                 [small, d / "mix.jsonl"], expect=0, check=no_leak)


@case
def stats_plot_is_input(d, ctx):
    src = good(d)
    return Setup(["data", "stats", str(src), "--plot", str(src)], [src])


@case
def stats_json_is_input(d, ctx):
    src = good(d)
    return Setup(["data", "stats", str(src), "--json", str(src)], [src])


@case
def generate_kg_out_is_input(d, ctx):
    src = d / "kg.csv"
    src.write_text("head,relation,tail\n感冒,症状,发热\n", encoding="utf-8")
    return Setup(["data", "generate", "kg", str(src), "-o", str(src)], [src])


# commands with a model --------------------------------------------------------------------------

@case
def merge_out_is_adapter(d, ctx):
    adapter = ctx.adapter(d)
    return Setup(["export", "merge", "--adapter", str(adapter), "-o", str(adapter), "--overwrite"],
                 [adapter])


@case
def merge_out_inside_adapter(d, ctx):
    adapter = ctx.adapter(d)
    return Setup(["export", "merge", "--adapter", str(adapter), "-o", str(adapter / "merged")], [adapter])


@case
def merge_out_contains_base(d, ctx):
    model = ctx.model(d)
    adapter = ctx.adapter(d)
    return Setup(["export", "merge", "--adapter", str(adapter), "--base", str(model),
                  "-o", str(model.parent), "--overwrite"], [adapter, model])


@case
def merge_failure_keeps_previous_output(d, ctx):
    adapter = ctx.adapter(d)
    out = good(d / "merged", "previous.jsonl").parent
    bogus = d / "notamodel"
    bogus.mkdir()
    (bogus / "config.json").write_text("{}", encoding="utf-8")
    return Setup(["export", "merge", "--adapter", str(adapter), "--base", str(bogus), "-o", str(out),
                  "--overwrite"], [adapter, out])


@case
def gguf_out_inside_model(d, ctx):
    model = ctx.model(d)
    return Setup(["export", "gguf", "--model", str(model), "-o", str(model / "model.safetensors"),
                  "--overwrite"], [model])


@case
def tokenizer_extend_out_is_base(d, ctx):
    model = ctx.model(d)
    corpus = d / "c.txt"
    corpus.write_text("感冒发热咳嗽\n" * 50, encoding="utf-8")
    return Setup(["tokenizer", "extend", "--base", str(model), "--corpus", str(corpus), "--add", "5",
                  "-o", str(model), "--overwrite"], [model, corpus])


@case
def tokenizer_extend_out_is_corpus(d, ctx):
    corpus = d / "c.txt"
    corpus.write_text("感冒发热咳嗽\n" * 50, encoding="utf-8")
    return Setup(["tokenizer", "extend", "--base", str(ctx.tiny), "--corpus", str(corpus), "--add", "5",
                  "-o", str(corpus), "--overwrite"], [ctx.tiny, corpus])


@case
def model_tiny_out_is_text(d, ctx):
    text = d / "t.txt"
    text.write_text("感冒发热咳嗽\n" * 50, encoding="utf-8")
    return Setup(["model", "tiny", "-o", str(text), "--text", str(text)], [text])


# train and pipeline: outputs aimed at inputs, values torch / peft would take unchecked, resumes --

def _train_yaml(d: Path, model: Path, out: Path, data: Path | None = None, name: str = "run.yaml",
                **sections) -> Path:
    import yaml

    cfg = {"stage": "sft", "model": {"path": str(model), "device": "cpu"},
           "data": {"train": [str(data or good(d, "train.jsonl"))], "max_length": 64},
           "adapter": {"method": "lora", "rank": 2, "alpha": 4},
           "train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1}, "output": str(out)}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    (d / name).write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return d / name


def _says(text: str):
    def check(stdout, stderr):
        return None if text in stderr else f"no '{text}' in: {stderr.strip()[-300:]}"
    return check


NOT_OVER_INPUTS = _says("medtune never writes over its own inputs")


@case
def train_out_is_model_path_overwrite(d, ctx):
    model = ctx.model(d)
    data = good(d, "train.jsonl")
    return Setup(["train", str(_train_yaml(d, model, model, data)), "--overwrite"], [model, data],
                 check=NOT_OVER_INPUTS)


@case
def train_out_inside_model(d, ctx):
    model = ctx.model(d)
    return Setup(["train", str(_train_yaml(d, model, model / "sft")), "--overwrite"], [model],
                 check=NOT_OVER_INPUTS)


@case
def train_out_contains_data(d, ctx):
    data = good(d / "data", "train.jsonl")
    return Setup(["train", str(_train_yaml(d, ctx.tiny, data.parent, data)), "--overwrite"], [data],
                 check=NOT_OVER_INPUTS)


@case
def train_out_is_deepspeed_config(d, ctx):
    ds = d / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}', encoding="utf-8")
    return Setup(["train", str(_train_yaml(d, ctx.tiny, ds, train={"deepspeed": str(ds)})), "--overwrite"],
                 [ds], check=NOT_OVER_INPUTS)


def _pipeline_yaml(d: Path, model: Path, *stages) -> Path:
    import yaml

    data = good(d, "train.jsonl")
    cfg = {"base": {"path": str(model), "device": "cpu"}, "output": str(d / "runs"),
           "stages": [{"stage": "sft", "data": {"train": [str(data)], "max_length": 64},
                       "train": {"max_steps": 1, "batch_size": 2}, **s} for s in stages]}
    (d / "pipe.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return d / "pipe.yaml"


@case
def pipeline_stage_out_is_base(d, ctx):
    model = ctx.model(d)
    return Setup(["pipeline", str(_pipeline_yaml(d, model, {"name": "a"}, {"name": "b", "output": str(model)})),
                  "--overwrite"], [model], check=NOT_OVER_INPUTS)


@case
def pipeline_stage_outputs_overlap(d, ctx):
    model = ctx.model(d)
    path = _pipeline_yaml(d, model, {"name": "a", "output": str(d / "runs")}, {"name": "b"})
    return Setup(["pipeline", str(path), "--overwrite"], [model], check=_says("overlap"))


def _bad_value(d, ctx, check: str, *overrides, **sections) -> Setup:
    data = good(d, "train.jsonl")
    path = _train_yaml(d, ctx.tiny, d / "out", data, **sections)
    return Setup(["train", str(path), *overrides], [data, d / "out"], check=_says(check))


@case
def train_negative_learning_rate(d, ctx):
    return _bad_value(d, ctx, "train.learning_rate must be > 0", train={"learning_rate": -1e-3})


@case
def train_nan_epochs(d, ctx):
    return _bad_value(d, ctx, "train.epochs: expected a finite number", "train.epochs=.nan", "train.max_steps=-1")


@case
def train_zero_epochs(d, ctx):  # exited 0 and wrote a 'finished' run that trained nothing
    return _bad_value(d, ctx, "nothing would train", train={"epochs": 0, "max_steps": -1})


@case
def train_negative_seed(d, ctx):
    return _bad_value(d, ctx, "train.seed must be in [0, 4294967295]", train={"seed": -1})


@case
def train_empty_lora_target(d, ctx):
    return _bad_value(d, ctx, "adapter.target is empty", adapter={"target": []})


@case
def train_unparsable_override(d, ctx):
    return _bad_value(d, ctx, "override 'train.epochs=[1': the value is not valid YAML", "train.epochs=[1")


@case
def train_override_without_key(d, ctx):
    return _bad_value(d, ctx, "override '=1'", "=1")


@contextlib.contextmanager
def _killed_at(module, name: str, replacement):
    """Stand-in for a SIGKILL: ``module.name`` raises (after ``replacement`` ran) while the block runs."""
    real = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, real)


class _Killed(Exception):
    pass


def _run_until_killed(path: Path, module, name: str, replacement) -> None:
    from medtune.config import load_stage_config
    from medtune.recipes.run import run_stage

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            _killed_at(module, name, replacement), contextlib.suppress(_Killed):
        run_stage(load_stage_config(path), quiet=True)


def _die(*args, **kwargs):
    raise _Killed


def _finished(steps: int):
    def check(stdout, stderr):
        if f"{steps} steps" not in stdout:
            return f"not '{steps} steps' in: {stdout.strip()[-300:]}"
        return None
    return check


@case
def train_resume_after_data_edit(d, ctx):
    import medtune.recipes.run as run

    data = good(d, "train.jsonl")
    path = _train_yaml(d, ctx.tiny, d / "out", data, train={"max_steps": 4, "save_steps": 1})
    _run_until_killed(path, run, "save_outputs", _die)
    jsonl(data, [*GOOD, {"instruction": "新问题", "output": "新回答"}])
    return Setup(["train", str(path)], [data, d / "out"], check=_says("changed since the interrupted run"))


@case
def train_killed_after_final_checkpoint_trains_no_extra_step(d, ctx):
    import medtune.recipes.run as run

    # 6 rows at batch 3: 2 steps an epoch; 1.5 epochs = 3 steps, the last checkpoint mid-epoch.
    path = _train_yaml(d, ctx.tiny, d / "out", train={"max_steps": -1, "epochs": 1.5, "batch_size": 3,
                                                      "save_steps": 2})
    _run_until_killed(path, run, "save_outputs", _die)
    return Setup(["train", str(path)], [d / "train.jsonl"], expect=0, check=_finished(3))


@case
def train_killed_after_checkpoints_removed_finishes_the_record(d, ctx):
    import shutil

    import medtune.recipes.run_dir as run_dir

    path = _train_yaml(d, ctx.tiny, d / "out", train={"save_steps": 1})

    def drop_then_die(out):
        shutil.rmtree(out / run_dir.CHECKPOINTS)
        raise _Killed

    _run_until_killed(path, run_dir, "finish_record", drop_then_die)
    return Setup(["train", str(path)], [d / "train.jsonl"], expect=0, check=_finished(2))


def _questions(d: Path, name: str = "q.jsonl", n: int = 3) -> Path:
    return jsonl(d / name, [{"id": i, "prompt": f"问题{i}"} for i in range(n)])


def _infer(ctx, src: Path, out: Path, *extra, model: Path | None = None) -> list[str]:
    return ["infer", "--model", str(model or ctx.tiny), "--input", str(src), "--output", str(out),
            "--max-new-tokens", "2", "--batch-size", "4", *extra]


@case
def infer_output_is_input(d, ctx):
    src = _questions(d)
    return Setup(_infer(ctx, src, src), [src])


@case
def infer_output_inside_model(d, ctx):
    model = ctx.model(d)
    src = _questions(d)
    return Setup(_infer(ctx, src, model / "answers.jsonl", model=model), [src, model])


@case
def infer_every_row_skipped(d, ctx):
    src = jsonl(d / "q.jsonl", [{"id": i, "messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"}]}
                                for i in range(3)])
    return Setup(_infer(ctx, src, d / "a.jsonl"), [src])


@case
def infer_input_is_a_directory(d, ctx):
    (d / "qdir").mkdir()
    return Setup(_infer(ctx, d / "qdir", d / "a.jsonl"), [])


@case
def infer_input_not_utf8(d, ctx):
    src = d / "q.jsonl"
    src.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    return Setup(_infer(ctx, src, d / "a.jsonl"), [src])


@case
def infer_mistyped_local_model(d, ctx):
    src = _questions(d)

    def fast(stdout, stderr):
        return None if "no such directory" in stderr else f"no 'no such directory' in: {stderr[-300:]}"
    (d / "runs" / "sft").mkdir(parents=True)
    return Setup(["infer", "--model", "runs/sft-typo", "--input", str(src), "--output", str(d / "a.jsonl")],
                 [src], check=fast, cwd=d)


@case
def infer_stale_answers_are_regenerated(d, ctx):
    src, out = _questions(d), d / "a.jsonl"
    from medtune.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["-q", *_infer(ctx, src, out)])
    jsonl(src, [{"id": i, "prompt": f"另一个问题{i}"} for i in range(3)])  # same ids, new prompts

    def regenerated(stdout, stderr):
        return None if "3 generated" in stdout else f"stale rows kept: {stdout.strip()[-200:]}"
    return Setup(_infer(ctx, src, out), [src], expect=0, check=regenerated)


@case
def eval_gen_output_holds_predictions(d, ctx):
    preds = jsonl(d / "generated_predictions.jsonl", [{"prediction": "休息", "reference": "多休息"}])
    return Setup(["eval", "gen", "--predictions", str(preds), "--output", str(d)], [preds])


@case
def eval_ppl_output_inside_model(d, ctx):
    model = ctx.model(d)
    text = d / "h.txt"
    text.write_text("感冒发热咳嗽。\n" * 5, encoding="utf-8")
    return Setup(["eval", "ppl", "--model", str(model), "--data", str(text), "--output",
                  str(model / "eval")], [model, text])


@case
def eval_report_output_is_a_run(d, ctx):
    run = good(d / "run", "metrics.json").parent
    return Setup(["eval", "report", str(run), "--output", str(run)], [run])


def _names_extra(extra: str):
    def check(stdout, stderr):
        return None if f"medtune[{extra}]" in stderr else f"no pip install 'medtune[{extra}]' in: {stderr[-200:]}"
    return check


@case
def serve_web_without_gradio(d, ctx):
    return Setup(["serve", "web", "--model", str(d / "never-loaded"), "--port", "1"], [], hide=("gradio",),
                 check=_names_extra("web"))


@case
def serve_api_without_fastapi(d, ctx):
    return Setup(["serve", "api", "--model", str(d / "never-loaded"), "--port", "1"], [],
                 hide=("fastapi", "uvicorn", "medtune.serving.api"), check=_names_extra("serve"))


def _says(text: str):
    def check(stdout, stderr):
        return None if text in stderr else f"no '{text}' in: {stderr[-200:]}"
    return check


@case
def serve_api_empty_api_key(d, ctx):  # an unset shell variable: "$KEY" is ""
    return Setup(["serve", "api", "--model", str(d / "never-loaded"), "--api-key", ""], [],
                 check=_says("--api-key is empty"))


@case
def serve_api_open_host_without_key(d, ctx):
    return Setup(["serve", "api", "--model", str(d / "never-loaded"), "--host", "0.0.0.0"], [],
                 check=_says("--no-auth"))


@case
def serve_api_zero_request_timeout(d, ctx):
    return Setup(["serve", "api", "--model", str(d / "never-loaded"), "--request-timeout", "0"], [],
                 check=_says("--request-timeout"))


@case
def serve_web_share_without_login(d, ctx):
    return Setup(["serve", "web", "--model", str(d / "never-loaded"), "--share"], [], check=_says("--no-auth"))


@case
def serve_web_empty_password(d, ctx):
    return Setup(["serve", "web", "--model", str(d / "never-loaded"), "--auth", "doc:"], [],
                 check=_says("USER:PASSWORD"))


@case
def eval_gen_without_jieba(d, ctx):
    data = jsonl(d / "test.jsonl", GOOD)
    return Setup(["eval", "gen", "--model", str(d / "never-loaded"), "--data", str(data), "--output",
                  str(d / "eval")], [data], hide=("jieba",), check=_names_extra("eval"))


# ------------------------------------------------------------------------------------- runner


@contextlib.contextmanager
def _hidden(modules):
    saved = {m: sys.modules.get(m) for m in modules}
    for m in modules:
        sys.modules[m] = None  # `import m` now fails as if m were not installed
    try:
        yield
    finally:
        for m, module in saved.items():
            if module is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = module


@contextlib.contextmanager
def _chdir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_case(name: str, workdir: Path, ctx: Context) -> Outcome:
    """Build case ``name`` under ``workdir``, run it in-process, and return what happened."""
    from medtune.cli.main import main

    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(name)
    try:
        setup = CASES[name](d, ctx)
    except BaseException as e:  # a builder that runs the CLI first (resumption cases) can fail there
        outcome.code, outcome.problem = 1, f"setup failed: {type(e).__name__}: {e}"[:300]
        return outcome
    outcome.expect = setup.expect
    try:
        if setup.skip:
            outcome.skipped = setup.skip
            return outcome
        before = {str(p): sha(p) for p in setup.protect}
        out, err = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                _chdir(setup.cwd or Path.cwd()), _hidden(setup.hide):
            try:
                outcome.code = main(["-q", *setup.argv])
            except SystemExit as e:  # argparse
                outcome.code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # what a user would see as a traceback
                import traceback

                traceback.print_exception(type(e), e, e.__traceback__, file=err)
                outcome.code = 1
        outcome.seconds = time.perf_counter() - started
        outcome.stderr = err.getvalue()
        outcome.traceback = "Traceback (most recent call last)" in outcome.stderr
        after = {str(p): sha(p) for p in setup.protect}
        outcome.damaged = [p for p in before if before[p] != after[p]]
        if outcome.code == 2 and outcome.expect == 2:
            errors = [ln for ln in outcome.stderr.splitlines() if ln.startswith("error:")]
            if len(errors) != 1:
                outcome.problem = f"{len(errors)} error lines"
        if setup.check and outcome.code == outcome.expect:
            outcome.problem = setup.check(out.getvalue(), outcome.stderr)
    finally:
        if setup.cleanup:
            setup.cleanup()
    return outcome


def counts(outcomes: list[Outcome]) -> dict:
    ran = [o for o in outcomes if o.skipped is None]
    return {"cases": len(outcomes), "ran": len(ran), "skipped": len(outcomes) - len(ran),
            "tracebacks": sum(o.traceback for o in ran),
            "wrong exit codes": sum(o.code != o.expect for o in ran),
            "inputs damaged": sum(bool(o.damaged) for o in ran),
            "other failures": sum(bool(o.problem) and o.code == o.expect for o in ran)}


if __name__ == "__main__":  # pragma: no cover - see bench/adversarial_counts.py
    sys.exit("run bench/adversarial_counts.py")
