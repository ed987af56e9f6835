"""The feedback flywheel end to end: the real chat page in headless Chromium (rate, edit an answer,
regenerate) stores into SQLite, ``medtune data feedback export`` turns it into pairs, and a ``dpo``
stage trains on them. Browser helpers and fixtures come from tests/e2e/test_webui.py.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_webui import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SHORT,
    _browser_missing,
    _free_port,
    messages,
    needs_browser,
    send,
    set_sampling,
    wait_for,
    wait_for_replies,
    web_server,
)
from tests.helpers.cli import medtune

pytestmark = pytest.mark.slow

Q1, Q2, Q3 = "高血压有哪些典型症状？", "头痛怎么办？", "失眠怎么办？"
CORRECTED = "头痛持续不缓解，请测量血压并及时就医。"
RETRY = {"max_new_tokens": 16, "repetition_penalty": 2.0}  # same prompt, another reply


@pytest.fixture(scope="module")
def bot(tiny_dir):
    from medtune.inference.chat import ChatModel

    return ChatModel.load(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def feedback_server(tiny_dir, tmp_path_factory):
    """``(url, db path)`` of ``medtune serve web --db`` on a free port, stopped after the module."""
    if _browser_missing():
        pytest.skip(_browser_missing())
    port, folder = _free_port(), tmp_path_factory.mktemp("feedback-web")
    db, log = folder / "feedback.db", folder / "server.log"
    with web_server(tiny_dir, port, log, "--db", str(db)) as (url, _):
        assert f"feedback db: {db}" in log.read_text()
        yield url, db


@pytest.fixture
def page(feedback_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = chromium.new_page()
        page.set_default_timeout(30_000)
        page.goto(feedback_server[0])
        page.get_by_text("System prompt and sampling").click()
        yield page
        chromium.close()


# ---------------------------------------------------------------- the callbacks, no browser


def test_recorded_reply_tags_the_answer_and_stores_it(bot, tmp_path):
    from medtune.serving.store import FeedbackStore
    from medtune.serving.webui import recorded_reply, response_ids

    store = FeedbackStore.open(str(tmp_path / "f.db"))
    *_, last = recorded_reply(bot, store, "tiny", Q1, [], "你是医生。", **SHORT)
    (answer,) = last
    rid = answer["metadata"]["id"]
    stored = store.response(rid)
    assert stored["reply"] == answer["content"]["text"] == bot.chat(Q1, system="你是医生。", **SHORT)[0]
    assert stored["prompt"] == [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": Q1}]
    history = [{"role": "user", "content": Q1}, answer]
    assert response_ids(history) == [None, rid]
    *_, follow = recorded_reply(bot, store, "tiny", Q2, history, **SHORT)
    assert store.response(follow[0]["metadata"]["id"])["conversation_id"] == stored["conversation_id"]
    steps = recorded_reply(bot, store, "tiny", Q3, [], max_new_tokens=200, repetition_penalty=2.0)
    partial = next(steps)[0]
    steps.close()  # stop: the part shown so far is stored
    assert store.response(partial["metadata"]["id"])["reply"] == partial["content"]["text"]
    store.close()


def test_feedback_controls_only_with_a_store(bot, tmp_path):
    from medtune.serving.store import FeedbackStore
    from medtune.serving.webui import build_app

    store = FeedbackStore.open(str(tmp_path / "f.db"))
    with_store, without = build_app(bot, "m", store=store), build_app(bot, "m")
    assert with_store.chatbot.editable == "all" and without.chatbot.editable is None
    events = {d.targets[0][1] for d in with_store.fns.values() if d.targets} - \
        {d.targets[0][1] for d in without.fns.values() if d.targets}
    assert {"like", "edit"} <= events
    store.close()


def _stored(db):
    """Every stored response (with its feedback), read through a fresh store."""
    from medtune.serving.store import FeedbackStore

    store = FeedbackStore.open(str(db), create=False)
    try:
        return {r["prompt"][-1]["content"]: r for r in store.responses()} | {"_all": store.responses()}
    finally:
        store.close()


def _wait_stored(db, check, timeout=30.0):
    got = wait_for(lambda: check(_stored(db)), timeout, every=0.2)
    assert got, f"not stored within {timeout}s: {_stored(db)['_all']}"


@pytest.mark.browser
@needs_browser
def test_rate_edit_regenerate_export_and_train_dpo(page, feedback_server, bot, tiny_dir, tmp_path):
    from medtune.recipes.run import run_stage
    from tests.helpers.stages import logged, stage_config

    _, db = feedback_server
    # the expected replies first (the page and this test must not generate on one engine at once)
    r1 = bot.chat(Q1, **SHORT)[0]
    r2 = bot.chat(Q2, [(Q1, r1)], **SHORT)[0]
    r3 = bot.chat(Q3, [(Q1, r1), (Q2, CORRECTED)], **SHORT)[0]
    r3_again = bot.chat(Q3, [(Q1, r1), (Q2, CORRECTED)], **RETRY)[0]
    assert r3 != r3_again and r2 != CORRECTED  # else the pairs below would be refused as identical

    set_sampling(page, **SHORT)
    send(page, Q1)
    assert wait_for_replies(page, [r1]) == [r1]
    page.get_by_label("Like", exact=True).last.click()  # thumbs up
    _wait_stored(db, lambda s: [f["rating"] for f in s.get(Q1, {}).get("feedback", [])] == ["up"])

    send(page, Q2)
    assert wait_for_replies(page, [r1, r2]) == [r1, r2]
    page.get_by_label("Edit", exact=True).last.click()  # the answer's pencil (the user message's comes first)
    page.locator("textarea.edit-textarea").fill(CORRECTED)
    page.get_by_label("Submit", exact=True).click()
    assert wait_for(lambda: messages(page, "bot") == [r1, CORRECTED], 15), messages(page, "bot")
    _wait_stored(db, lambda s: [f["corrected_text"] for f in s.get(Q2, {}).get("feedback", [])] == [CORRECTED])

    send(page, Q3)  # the model sees the corrected answer in the history (r3 was computed with it)
    assert wait_for_replies(page, [r1, CORRECTED, r3]) == [r1, CORRECTED, r3]
    set_sampling(page, **RETRY)
    page.get_by_label("Retry", exact=True).click()  # regenerate: r3 is replaced, and rejected
    assert wait_for_replies(page, [r1, CORRECTED, r3_again]) == [r1, CORRECTED, r3_again]
    _wait_stored(db, lambda s: len([r for r in s["_all"] if r["prompt"][-1]["content"] == Q3]) == 2)
    page.get_by_label("Like", exact=True).last.click()

    def q3_done(s):
        replies = {r["reply"]: r for r in s["_all"] if r["prompt"][-1]["content"] == Q3}
        new = replies.get(r3_again, {})
        return [f["rating"] for f in new.get("feedback", [])] == ["up"] and new
    _wait_stored(db, q3_done)
    page.get_by_label("Edit", exact=True).first.click()  # a question is not an answer: kept, nothing stored
    page.locator("textarea.edit-textarea").fill("改过的问题")
    page.get_by_label("Submit", exact=True).click()
    assert page.get_by_text("Only answers can be edited here").first.is_visible() or wait_for(
        lambda: page.get_by_text("Only answers can be edited here").count(), 10)
    assert wait_for(lambda: messages(page, "user") == [Q1, Q2, Q3], 10), messages(page, "user")
    assert messages(page, "bot") == [r1, CORRECTED, r3_again]

    stored = _stored(db)["_all"]
    assert len(stored) == 4 and len({r["conversation_id"] for r in stored}) == 1
    old, new = (next(r for r in stored if r["reply"] == text) for text in (r3, r3_again))
    assert [(f["rating"], f["source"]) for f in old["feedback"]] == [("down", "regenerate")]
    assert new["parent_id"] == old["id"] and new["prompt"] == old["prompt"]
    assert new["prompt"][-2] == {"role": "assistant", "content": CORRECTED}

    pairs, kto = tmp_path / "pairs.jsonl", tmp_path / "kto.jsonl"
    proc = medtune("data", "feedback", "export", "--db", db, "-o", pairs, "--kto", kto)
    assert proc.returncode == 0, proc.stderr
    assert "4 responses -> 2 pairs, 5 KTO records | 1 skipped" in proc.stdout, proc.stdout
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows} == {(CORRECTED, r2), (r3_again, r3)}

    result = run_stage(stage_config(tiny_dir, pairs, tmp_path / "dpo", "dpo", train={"max_steps": 2}), quiet=True)
    curve = logged(result)
    assert len(curve) == 2 and all(v == v and abs(v) < 1e6 for v in curve), curve
    from safetensors.torch import load_file

    weights = load_file(str(result.output / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: it moved, it trained
