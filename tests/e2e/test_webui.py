"""``medtune serve web``: the chat page in a real headless Chromium against the real CLI server,
plus the page's Python callback without a browser.

The tiny random model's greedy reply is a run of newlines (stripped to nothing), so replies here use
a repetition penalty of 3 (2 for long replies): garbage text, but deterministic and non-empty.
The browser reads each message's raw text from its ``aria-label`` ("bot's message: <text>"), which
Gradio fills with the unrendered content, so it can be compared exactly with ``ChatModel.chat``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.cli import assert_one_line_error, medtune

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
SHORT = {"max_new_tokens": 16, "repetition_penalty": 3.0}
SYSTEM = "你是一名专业的医生。"


def _browser_missing() -> str:
    """Return why the browser tests cannot run here ('' when they can)."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} missing: apt-get install chromium (see .ci/run)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright missing: scripts/setup.sh dev installs it"
    return ""


needs_browser = pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing())


@pytest.fixture(scope="module")
def bot(tiny_dir):
    from medtune.inference.chat import ChatModel

    return ChatModel.load(tiny_dir, device="cpu")


# ---------------------------------------------------------------- the callback, no browser


def test_build_app_shows_model_and_template_and_has_no_uploads(bot):
    import gradio as gr

    from medtune.serving.webui import build_app

    app = build_app(bot, "runs/my-model")
    assert isinstance(app, gr.Blocks)
    blocks = list(app.blocks.values())
    text = " ".join(str(getattr(b, "value", "")) + str(getattr(b, "description", "")) for b in blocks)
    assert "runs/my-model" in text and "chatml" in text
    uploads = (gr.File, gr.UploadButton, gr.MultimodalTextbox, gr.Image, gr.Audio, gr.Video)
    assert not [b for b in blocks if isinstance(b, uploads)]
    sliders = {b.label: b.value for b in blocks if isinstance(b, gr.Slider)}
    assert sliders["Temperature (0 = greedy)"] == 0  # default greedy: the same question, the same answer


def answers(steps) -> list[str]:
    """The answer text of each step :func:`reply_messages` yields (its last message)."""
    return [step[-1]["content"]["text"] for step in steps]


def test_reply_messages_stream_is_cumulative_and_equals_chat(bot):
    from medtune.serving.webui import reply_messages

    steps = answers(reply_messages(bot, "高血压有哪些典型症状？", [], "", **SHORT))
    assert len(set(steps)) > 2 and all(b.startswith(a) for a, b in itertools.pairwise(steps))
    assert steps[-1] == bot.chat("高血压有哪些典型症状？", **SHORT)[0] != ""


def test_reply_messages_uses_system_prompt_and_gradio_history(bot):
    from medtune.serving.webui import reply_messages

    history = [{"role": "user", "content": [{"type": "text", "text": "你好"}]},
               {"role": "assistant", "content": "您好，请问哪里不舒服？", "metadata": None}]
    plain = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好，请问哪里不舒服？"}]
    with_system = bot.chat("头痛怎么办？", plain, system=SYSTEM, **SHORT)[0]
    assert with_system != bot.chat("头痛怎么办？", plain, **SHORT)[0]  # else this test proves nothing
    *_, reply = answers(reply_messages(bot, "头痛怎么办？", history, f"  {SYSTEM}\n", **SHORT))
    assert reply == with_system


def test_closing_the_stream_stops_generation_and_is_audited(bot):
    from medtune.inference.service import ReplyService
    from medtune.serving.webui import reply_messages

    class Sink(list):
        write = list.append

    steps, sink = [], Sink()
    service = ReplyService(audit=sink)
    hook = bot.model.register_forward_hook(lambda *_: steps.append(1))
    try:
        list(reply_messages(bot, "你好", [], "", service=service, max_new_tokens=200, repetition_penalty=2.0))
        assert len(steps) == 200  # runs to the limit when left alone
        steps.clear()
        threads = threading.active_count()
        stream = reply_messages(bot, "你好", [], "", service=service, max_new_tokens=200, repetition_penalty=2.0)
        first = answers([next(stream)])[0]
        stream.close()  # what Gradio does on stop, regenerate mid-stream or a closed tab
        assert len(steps) < 50 and threading.active_count() == threads
    finally:
        hook.remove()
    assert len(sink) == 2 and sink[1]["reply"].startswith(first) and len(sink[1]["reply"]) < len(sink[0]["reply"])


def test_busy_port_is_a_one_line_error_before_loading(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        proc = medtune("serve", "web", "--model", tmp_path / "not-loaded", "--port", held.getsockname()[1])
    assert_one_line_error(proc, "cannot serve on 127.0.0.1:")


@pytest.fixture(scope="module")
def thinker(tiny_dir):
    """``(ChatModel, Scripted)``: the tiny model with the qwen3 built-in, scripted to think, then answer."""
    from medtune.inference.chat import ChatModel
    from tests.helpers.scripted import Scripted

    script = Scripted(tiny_dir, "qwen3")
    return ChatModel(script.engine.model, script.tok, name="tiny"), script


def test_thinking_controls_come_from_generation_settings(bot, thinker):
    import gradio as gr

    from medtune.inference.settings import label
    from medtune.serving.webui import build_app

    def controls(chat):
        blocks = build_app(chat, "m").blocks.values()
        return {b.label: b for b in blocks if isinstance(b, (gr.Checkbox, gr.Number))}

    qwen3 = controls(thinker[0])
    box, budget = qwen3[label("enable_thinking")], qwen3[label("thinking_budget")]
    assert box.visible and box.value is True and budget.value is None and budget.minimum == 0
    assert controls(bot)[label("enable_thinking")].visible is False  # chatml reads no enable_thinking


def test_settings_from_controls():
    from medtune.serving.webui import settings_from_controls

    sliders = [0.0, 1.0, 32.0, 1.0]
    assert settings_from_controls([*sliders, False, None], thinks=True) == {
        "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32, "repetition_penalty": 1.0,
        "enable_thinking": False, "thinking_budget": None}
    got = settings_from_controls([*sliders, True, 5.0], thinks=False)
    assert got["enable_thinking"] is None and got["thinking_budget"] == 5 and type(got["thinking_budget"]) is int


def test_the_trace_streams_into_a_collapsible_thinking_message(thinker):
    from medtune.serving.webui import reply_messages

    chat, s = thinker
    s.script = s.ids("<thi", "nk>\n", [s.fever] * 3, "\n</", "think>\n\n", [s.rest])
    steps = list(reply_messages(chat, "Is 55 too low?", [], "", max_new_tokens=40))
    thought, answer = steps[-1]
    assert thought["metadata"] == {"title": "Thinking", "status": "done"}
    assert thought["content"]["text"] == s.text([s.fever] * 3)
    assert answer["content"]["text"] == s.text([s.rest]) * (40 - len(s.script) + 1) == chat.chat("Is 55 too low?", max_new_tokens=40)[0].split("</think>")[1].strip()
    pending = [step for step in steps if step[0].get("metadata", {}).get("status") == "pending"]
    assert pending and all(len(step) == 1 for step in pending)  # the trace alone while it streams, open
    assert not any("think>" in m["content"]["text"] for step in steps for m in step)


def test_the_budget_and_the_checkbox_reach_generation(thinker, monkeypatch):
    from medtune.serving.webui import reply_messages, settings_from_controls

    chat, s = thinker
    s.script = s.ids("<think>", [s.fever])  # thinks forever unless the budget closes the block
    sampling = settings_from_controls([0.0, 1.0, 20.0, 1.0, True, 2.0], thinks=True)
    *_, (thought, answer) = reply_messages(chat, "Is 55 too low?", [], "", **sampling)
    assert thought["content"]["text"] == s.text([s.fever] * 2) and answer["content"]["text"]
    seen = []
    encode = chat.engine.encode_chat
    monkeypatch.setattr(chat.engine, "encode_chat", lambda m, **kw: seen.append(kw) or encode(m, **kw))
    list(reply_messages(chat, "q", [], "", **settings_from_controls([0.0, 1.0, 2.0, 1.0, False, None], thinks=True)))
    assert seen and all(kw["enable_thinking"] is False for kw in seen)


def test_a_trace_in_the_history_is_not_sent_back():
    from medtune.serving.webui import chat_messages

    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "content": "mulling", "metadata": {"title": "Thinking", "status": "done"}},
               {"role": "assistant", "content": "a", "metadata": None}]
    assert chat_messages(history) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


# ---------------------------------------------------------------- the real server in a browser


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    """``(url, psutil.Process)`` of ``medtune serve web`` on a free port, stopped after the module."""
    import psutil

    if _browser_missing():
        pytest.skip(_browser_missing())
    port = _free_port()
    log = tmp_path_factory.mktemp("web") / "server.log"
    with web_server(tiny_dir, port, log, env={**os.environ, "PYTHONWARNINGS": "ignore"}) as (url, proc):
        yield url, psutil.Process(proc.pid)


@contextlib.contextmanager
def web_server(model, port: int, log: Path, *flags: str, env=None):
    """Run ``medtune serve web --model model --port port FLAGS`` (output to ``log``); yield ``(url,
    Popen)`` once its page answers; stop it after."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medtune", "serve", "web", "--model", str(model), "--device", "cpu",
             "--port", str(port), *flags], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, log)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url, proc, log, timeout=180):
    """Return once the server has printed ``url`` and the page there answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"medtune serve web exited with {proc.returncode}:\n{log.read_text()}")
        if f"chat page: {url}" in log.read_text():
            with urllib.request.urlopen(url, timeout=10) as r:
                assert r.status == 200
            return
        time.sleep(0.5)
    pytest.fail(f"no 'chat page: {url}' after {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh chat page (a new Gradio session: empty history) with the settings panel open."""
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(server[0])
    page.get_by_text("System prompt and sampling").click()
    yield page
    page.close()


def set_sampling(page, max_new_tokens, repetition_penalty):
    page.get_by_label("number input for Max new tokens").fill(str(max_new_tokens))
    page.get_by_label("number input for Repetition penalty").fill(str(repetition_penalty))


def send(page, text):
    # The first textarea is the message box (the system prompt's comes later, in the settings).
    page.locator("textarea").first.fill(text)
    page.keyboard.press("Enter")


def messages(page, role) -> list[str]:
    """Return the raw text of every ``role`` ('user' or 'bot') message on the page."""
    prefix = f"{role}'s message: "
    labels = [e.get_attribute("aria-label") for e in page.query_selector_all(f"[data-testid={role}]")]
    return [label[len(prefix):] for label in labels]


def generating(page) -> bool:
    return page.get_by_test_id("stop-button").is_visible()


def wait_for(check, timeout=30.0, every=0.05):
    """Poll ``check()`` until truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


def wait_for_replies(page, expected, timeout=30.0) -> list[str]:
    """Return the page's bot messages once they equal ``expected`` and generation ended (or at timeout)."""
    wait_for(lambda: messages(page, "bot") == expected and not generating(page), timeout)
    return messages(page, "bot")


@pytest.mark.browser
@needs_browser
def test_page_header_defaults_and_greedy_streamed_reply(page, bot, tiny_dir):
    header = page.inner_text("body")
    assert str(tiny_dir) in header and "Chat template: chatml" in header
    assert page.get_by_label("number input for Temperature (0 = greedy)").input_value() == "0"
    # the expected reply first: generating it while the page's own generation runs on the same
    # engine made the two overlap under load (the page then ran past max_new_tokens)
    expected = bot.chat("高血压有哪些典型症状？", **SHORT)[0]
    assert expected
    set_sampling(page, **SHORT)
    send(page, "高血压有哪些典型症状？")
    assert wait_for_replies(page, [expected]) == [expected]
    assert messages(page, "user") == ["高血压有哪些典型症状？"]
    assert page.locator("[data-testid=bot]").inner_text().strip()  # rendered, not only labelled


@pytest.mark.browser
@needs_browser
def test_history_then_clear_starts_a_new_conversation(page, bot):
    first = bot.chat("你好", **SHORT)[0]
    follow_up = bot.chat("头痛怎么办？", [("你好", first)], **SHORT)[0]
    fresh = bot.chat("头痛怎么办？", **SHORT)[0]
    assert follow_up != fresh  # else this test cannot tell whether history reached the model
    set_sampling(page, **SHORT)
    send(page, "你好")
    assert wait_for_replies(page, [first]) == [first]
    send(page, "头痛怎么办？")
    assert wait_for_replies(page, [first, follow_up]) == [first, follow_up]
    page.get_by_label("Clear", exact=True).click()
    assert wait_for(lambda: not messages(page, "user") and not messages(page, "bot"), 10)
    send(page, "头痛怎么办？")
    assert wait_for_replies(page, [fresh]) == [fresh]  # the server forgot the old turns too
    assert messages(page, "user") == ["头痛怎么办？"]


@pytest.mark.browser
@needs_browser
def test_regenerate_replaces_the_last_reply_with_current_settings(page, bot):
    plain = bot.chat("失眠怎么办？", **SHORT)[0]
    with_system = bot.chat("失眠怎么办？", system=SYSTEM, **SHORT)[0]
    assert plain != with_system
    set_sampling(page, **SHORT)
    send(page, "失眠怎么办？")
    assert wait_for_replies(page, [plain]) == [plain]
    page.get_by_label("System prompt").fill(SYSTEM)
    page.get_by_label("Retry", exact=True).click()
    assert wait_for_replies(page, [with_system]) == [with_system]
    assert messages(page, "user") == ["失眠怎么办？"]


@pytest.mark.browser
@needs_browser
def test_reply_streams_and_stop_ends_server_generation(page, bot, server):
    long = {"max_new_tokens": 1500, "repetition_penalty": 2.0}
    # The whole greedy reply at the page's settings (~2 s here): whenever the stop lands, what the
    # page shows must be a prefix of it. A 300-token reference was too short on a faster machine,
    # where more than 300 tokens streamed before the click reached the server.
    full = "".join(bot.stream_chat("你好", **long))
    assert len(full) > 1000
    set_sampling(page, **long)
    send(page, "你好")
    seen: list[str] = []
    assert wait_for(lambda: _growth(page, seen), timeout=30, every=0.02), f"not streamed: {seen}"
    assert seen[1].startswith(seen[0]) and len(seen[1]) > len(seen[0])
    page.get_by_test_id("stop-button").click()
    assert wait_for(lambda: not generating(page), 10), "stop button still shown 10 s after stopping"
    stopped = messages(page, "bot")[-1]
    process = server[1]
    time.sleep(0.5)
    cpu = sum(process.cpu_times()[:2])
    time.sleep(2.0)
    busy = sum(process.cpu_times()[:2]) - cpu
    assert busy < 0.6, f"server used {busy:.2f} s CPU in the 2 s after stop: generation still running"
    assert messages(page, "bot")[-1] == stopped  # frozen
    for shown in [*seen, stopped]:
        same = next((i for i, (a, b) in enumerate(zip(shown, full)) if a != b), min(len(shown), len(full)))
        assert full.startswith(shown), (f"the page's text ({len(shown)} chars) leaves the greedy reply at "
                                        f"char {same}: {shown[same - 20:same + 20]!r} vs {full[same - 20:same + 20]!r}")
    assert len(stopped) < len(full), "the reply ran to its end: the stop was not tested"


def _growth(page, seen) -> list[str]:
    """Record each new non-empty text of the last reply in ``seen``; return it once it has 2."""
    texts = messages(page, "bot")
    if texts and texts[-1] and (not seen or seen[-1] != texts[-1]):
        seen.append(texts[-1])
    return seen if len(seen) >= 2 else []
