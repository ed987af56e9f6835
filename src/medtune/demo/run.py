"""``medtune demo``: build a tiny model from scratch (its tokenizer's merges learned from jieba's
words of the corpus), run one mixed stage (pretraining text and questions together) -> GRPO on the
bundled knowledge base, and report fact accuracy after every stage.

The mixed stage trains on the corpus and on questions about 90 of the 100 diseases; the other 10
are only in the text, and the report asks about them too (``unseen_disease_accuracy``). The GRPO
stage trains with the ``answer_match`` verifier on the questions of an RL pool (a sentence frame
neither SFT nor the evaluation uses) that the model before it does not answer reliably, and the
report gives its accuracy on them (greedy and sampled) before and after.

Example (CPU, a few minutes)::

    medtune demo --out runs/demo
    python -c "import json; print(json.load(open('runs/demo/report.json'))['heldout_accuracy'])"

The stage hyper-parameters live in ``medtune/assets/demo/pipeline.yaml`` and run through the same
pipeline machinery as ``medtune pipeline``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path

import yaml

from medtune.errors import MedtuneError

log = logging.getLogger("medtune")
SAMPLE_CHATS = [  # the held-out frame ("能说说…吗？"), multi-turn
    ["能说说糖尿病的典型症状吗？", "能说说糖尿病的一线用药吗？"],
    ["能说说偏头痛的就诊科室吗？", "能说说偏头痛的禁忌吗？"],
]


def demo_config() -> dict:
    """Return the bundled demo pipeline config (model size, stages, hyper-parameters)."""
    text = resources.files("medtune.assets.demo").joinpath("pipeline.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _write_jsonl(path: Path, rows) -> str:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MedtuneError(f"'{out}' already holds files; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_demo_data(out: Path, seed: int):
    """Write the rendered corpus, SFT set and held-out sets under ``out/data``; return them."""
    from medtune.demo.kb import build_demo_data

    data = build_demo_data(seed=seed)
    ddir = out / "data"
    ddir.mkdir(parents=True, exist_ok=True)
    paths = {
        "corpus": _write_jsonl(ddir / "corpus.jsonl", ({"text": t} for t in data.corpus)),
        "sft": _write_jsonl(ddir / "sft.jsonl", data.sft),
        "heldout": _write_jsonl(ddir / "heldout.jsonl", data.heldout),
        "unseen": _write_jsonl(ddir / "unseen.jsonl", data.unseen),
        "missed": str(ddir / "missed.jsonl"),  # written before the stage that trains on it (RL)
    }
    return data, paths




def evaluate_stage(model_dir, data) -> dict:
    """Return held-out and unseen-disease fact accuracy of the model in ``model_dir``."""
    from medtune.evaluation.factqa import accuracy_by, fact_accuracy
    from medtune.inference.chat import ChatModel

    bot = ChatModel.load(model_dir, device="cpu")
    heldout, rows = fact_accuracy(bot, data.heldout)
    unseen, unseen_rows = fact_accuracy(bot, data.unseen)
    cloze, cloze_rows = fact_accuracy(bot, data.cloze, max_new_tokens=12, chat=False)
    return {"heldout": heldout, "unseen": unseen, "cloze": cloze, "model": str(model_dir),
            "by_relation": accuracy_by(rows, "relation"), "examples": rows[:3], "rows": rows,
            "unseen_rows": unseen_rows, "sizes": {"unseen_accuracy": len(unseen_rows), "cloze_accuracy": len(cloze_rows)}}


def write_stage_eval(out: Path, stage: str, score: dict) -> Path:
    """Write a stage's fact-QA scores as a ``medtune eval`` result (for ``eval report``)."""
    from medtune.evaluation.results import EvalResult, write_result

    folder = out / "eval" / stage
    folder.mkdir(parents=True, exist_ok=True)
    rows = score["rows"]
    items = [*(("heldout", i, r) for i, r in enumerate(rows)), *(("unseen", i, r) for i, r in enumerate(score["unseen_rows"]))]
    with open(folder / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": i if part == "heldout" else f"{part}-{i}", "prompt": r["question"], "reference": r["answer"],
                                 "prediction": r["reply"], "correct": r["correct"], "group": r["relation"], "set": part},
                                ensure_ascii=False) + "\n" for part, i, r in items)
    counts = {rel: sum(r["relation"] == rel for r in rows) for rel in score["by_relation"]}
    result = EvalResult(
        task="factqa", model=score["model"], data=["demo held-out questions", "unseen-disease questions", "cloze prompts"],
        sizes=score["sizes"],
        overall={"heldout_accuracy": round(score["heldout"], 4), "unseen_accuracy": round(score["unseen"], 4),
                 "cloze_accuracy": round(score["cloze"], 4), "n": len(rows)},
        group_by="relation", samples="predictions.jsonl",
        groups={rel: {"heldout_accuracy": acc, "n": counts[rel]} for rel, acc in score["by_relation"].items()})
    return write_result(result, folder, quiet=True)


RL_SAMPLES = 4  # sampled answers per RL-pool question (temperature 1) that decide whether the model "knows" it
RL_TEMPERATURE = 1.0
RL_NEW_TOKENS = 16  # the longest demo answer is 12 tokens (jieba-segmented tokenizer)


def pool_answers(model_dir, items, seed: int) -> list[dict]:
    """Ask each of ``items`` once greedily and ``RL_SAMPLES`` times sampled (temperature 1, torch
    seeded with ``seed``); return each item with ``greedy`` (right or not) and ``sampled`` (how many
    of the samples were right)."""
    import torch

    from medtune.inference.chat import ChatModel

    bot = ChatModel.load(model_dir, device="cpu")
    convs = [[{"role": "user", "content": it["question"]}] for it in items]
    greedy = bot.chat_batch(convs, max_new_tokens=RL_NEW_TOKENS, temperature=0.0)
    torch.manual_seed(seed)
    samples = [bot.chat_batch(convs, max_new_tokens=RL_NEW_TOKENS, temperature=RL_TEMPERATURE) for _ in range(RL_SAMPLES)]
    return [{**it, "greedy": it["answer"] in g, "sampled": sum(it["answer"] in s[i] for s in samples)}
            for i, (it, g) in enumerate(zip(items, greedy))]


def _pool_accuracy(rows) -> dict:
    n = len(rows) or 1
    return {"greedy": round(sum(r["greedy"] for r in rows) / n, 4),
            "sampled": round(sum(r["sampled"] for r in rows) / (n * RL_SAMPLES), 4)}


def write_missed(model_dir, data, path, seed: int = 0) -> dict:
    """Ask the model in ``model_dir`` the RL pool (one question per fact of the SFT diseases, in a
    frame neither SFT nor the evaluation uses) greedily and ``RL_SAMPLES`` times sampled; write the
    questions it misses (greedy wrong, or any sample wrong: the model does not answer them reliably,
    and GRPO learns only from groups where some samples are right and some wrong) to ``path`` as
    conversations whose answer is the fact's value (the RL stage's reference). Return ``{"pool",
    "questions", "before"}``: how many asked, how many missed, and the accuracy on those (greedy and
    sampled)."""
    rows = pool_answers(model_dir, data.rl_pool, seed)
    missed = [r for r in rows if not r["greedy"] or r["sampled"] < RL_SAMPLES]
    _write_jsonl(Path(path), ({"messages": [{"role": "user", "content": r["question"]},
                                            {"role": "assistant", "content": r["answer"]}],
                               "relation": r["relation"], "disease": r["disease"]} for r in missed))
    return {"pool": len(rows), "questions": len(missed), "before": _pool_accuracy(missed)}


def missed_accuracy(model_dir, path, seed: int = 0) -> dict:
    """Accuracy (greedy and sampled, as :func:`write_missed` measured it) of the model in
    ``model_dir`` on the questions :func:`write_missed` wrote."""
    from medtune.files import iter_jsonl

    items = [{"question": r["messages"][0]["content"], "answer": r["messages"][1]["content"]}
             for _, r in iter_jsonl(path)]
    return _pool_accuracy(pool_answers(model_dir, items, seed))


def sample_chats(model_dir) -> list:
    """Return a few multi-turn sample conversations with the final model (greedy)."""
    from medtune.inference.chat import ChatModel

    bot = ChatModel.load(model_dir, device="cpu")
    chats = []
    for turns in SAMPLE_CHATS:
        history: list = []
        for query in turns:
            _, history = bot.chat(query, history, max_new_tokens=48)
        chats.append(history)
    return chats


def seeded_config(cfg: dict, seed: int | None) -> dict:
    """Return the demo config with ``seed`` as the model-init and every stage's training seed
    (the questions and the unseen diseases stay those of the config's own ``seed``)."""
    if seed is None:
        return cfg
    cfg = {**cfg, "tiny": {**cfg["tiny"], "seed": seed}}
    cfg["stages"] = [{**st, "train": {**st.get("train", {}), "seed": seed}} for st in cfg["stages"]]
    return cfg


def run_demo(out, overwrite: bool = False, quiet: bool = False, seed: int | None = None,
             config: dict | None = None) -> dict:
    """Run the whole demo into ``out`` and return the report (also written to report.json).

    ``seed``: the model-init and training seed (default: the config's); ``config``: a demo config
    dict in the shape of ``demo_config()`` (default: the bundled one)."""
    from medtune.config import pipeline_from_dict
    from medtune.evaluation.plots import plot_losses
    from medtune.models.tiny import TinySpec, build_tiny
    from medtune.recipes.run import run_stage

    started = time.time()
    out = Path(out)
    _prepare(out, overwrite)
    cfg = seeded_config(config if config is not None else demo_config(), seed)
    data, paths = write_demo_data(out, seed=cfg["seed"])
    log.info("demo data: %d PT documents, %d SFT conversations, %d held-out + %d unseen questions",
             len(data.corpus), len(data.sft), len(data.heldout), len(data.unseen))
    base = build_tiny(out / "base", TinySpec(**cfg["tiny"]), data.corpus)  # tokenizer learns the PT corpus only
    pipeline = {"base": {"path": str(base), "device": "cpu"}, "output": str(out), "stages": cfg["stages"]}
    for stage in pipeline["stages"]:  # the config names the demo's data files: corpus, sft, ...
        stage["data"]["train"] = [_data_path(paths, name, stage["name"]) for name in stage["data"]["train"]]
    stages = pipeline_from_dict(pipeline, "demo pipeline")
    scores = {"base": evaluate_stage(base, data)}
    _log_scores("base", scores["base"])
    histories, timings, rl = {}, {}, {}
    previous = base
    for stage in stages:
        if paths["missed"] in stage.data.train:
            rl[stage.name] = write_missed(previous, data, paths["missed"], seed=cfg["tiny"]["seed"])
            if not rl[stage.name]["questions"]:
                log.info("[%s] skipped: the model before it answers every question of its pool", stage.name)
                continue
        result = run_stage(stage, quiet=quiet)
        previous = result.output
        histories[stage.name] = result.log_history
        timings[stage.name] = result.metrics.get("train_runtime_s")
        scores[stage.name] = evaluate_stage(result.output, data)
        _log_scores(stage.name, scores[stage.name])
        if stage.name in rl:
            rl[stage.name]["after"] = after = missed_accuracy(result.output, paths["missed"], seed=cfg["tiny"]["seed"])
            before = rl[stage.name]["before"]
            log.info("[%s] on the %d RL questions the previous model missed: sampled %.1f%% -> %.1f%%, greedy %.1f%% -> %.1f%%",
                     stage.name, rl[stage.name]["questions"], 100 * before["sampled"], 100 * after["sampled"],
                     100 * before["greedy"], 100 * after["greedy"])
    plot_losses(histories, out / "loss.png")
    for stage_name, score in scores.items():
        write_stage_eval(out, stage_name, score)
    from medtune.evaluation.report import write_report

    # the evals in stage order: the first is the baseline the headlines compare against
    write_report([out, *(out / "eval" / name for name in scores)], out / "report",
                 title="medtune demo: " + " -> ".join(scores))
    report = {
        "heldout_accuracy": {k: round(v["heldout"], 4) for k, v in scores.items()},
        "unseen_disease_accuracy": {k: round(v["unseen"], 4) for k, v in scores.items()},
        "cloze_accuracy": {k: round(v["cloze"], 4) for k, v in scores.items()},
        "by_relation": {k: v["by_relation"] for k, v in scores.items()},
        "examples": {k: v["examples"] for k, v in scores.items()},
        "rl_on_missed": rl,
        "report": str(out / "report" / "report.html"),
        "sample_chats": sample_chats(previous),  # the last model trained (GRPO is skipped when nothing was missed)
        "counts": {"pt_documents": len(data.corpus), "sft_conversations": len(data.sft),
                   "heldout_questions": len(data.heldout), "unseen_questions": len(data.unseen),
                   "cloze_prompts": len(data.cloze)},
        "train_runtime_s": timings,
        "wall_time_s": round(time.time() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def _data_path(paths: dict, name: str, stage: str) -> str:
    if name not in paths:
        raise MedtuneError(f"demo config: stage {stage}: data.train names '{name}', not one of the demo's "
                           f"data files ({', '.join(paths)})")
    return paths[name]


def _log_scores(stage: str, score: dict) -> None:
    log.info("[%s] held-out question accuracy %.1f%% | unseen-disease %.1f%% | fact cloze (plain text) %.1f%%",
             stage, 100 * score["heldout"], 100 * score["unseen"], 100 * score["cloze"])
