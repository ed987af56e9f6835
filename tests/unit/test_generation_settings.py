"""GenerationSettings is the one definition: the CLI flags, the API schema and the web sliders are
derived from it, so these tests read them back from the parser, the validator and the page builder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medtune.cli.main import build_parser
from medtune.errors import MedtuneError
from medtune.inference.settings import FIELDS, GenerationSettings, served_bounds, slider

COMMANDS = {  # command line -> (settings it has flags for, defaults it sets itself)
    ("chat", "--model", "m"): (("max_new_tokens", "temperature"), {}),
    ("infer", "--model", "m", "--input", "i", "--output", "o"):
        (("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed"), {"seed": 42}),
    ("eval", "gen", "--output", "o"): (("max_new_tokens",), {}),
    ("eval", "choice", "--model", "m", "--data", "d", "--output", "o"): (("max_new_tokens",), {"max_new_tokens": 64}),
}


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_cli_flags_take_defaults_and_types_from_the_dataclass(argv):
    names, own = COMMANDS[argv]
    args = vars(build_parser().parse_args(list(argv)))
    assert {n: args[n] for n in names} == {n: own.get(n, FIELDS[n].default) for n in names}
    given = {"max_new_tokens": "7", "temperature": "0.5", "top_p": "0.25", "repetition_penalty": "2",
             "seed": "3"}
    flags = [x for n in names for x in ("--" + n.replace("_", "-"), given[n])]
    parsed = vars(build_parser().parse_args([*argv, *flags]))
    assert {n: parsed[n] for n in names} == {n: json.loads(given[n]) for n in names}
    assert all(type(parsed[n]) is (float if FIELDS[n].type == "float" else int) for n in names)


def _request(**fields):
    from medtune.serving.schema import ChatRequest, parse_request

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(json.dumps(body).encode(), ChatRequest)


@pytest.mark.parametrize("name,api_name", [("temperature", "temperature"), ("top_p", "top_p"),
                                           ("max_new_tokens", "max_tokens"), ("n", "n"),
                                           ("repetition_penalty", "repetition_penalty")])
def test_api_accepts_exactly_the_served_bounds(name, api_name):
    from medtune.serving.schema import RequestError

    bounds = served_bounds(name)
    assert bounds, name
    inside = [bounds[k] for k in ("ge", "le") if k in bounds]
    step = {"ge": -1, "le": 1, "gt": 0}  # just outside each bound
    outside = [value + step[k] for k, value in bounds.items()]
    for value in inside:
        assert getattr(_request(**{api_name: value}), api_name) == value
    for value in outside:
        with pytest.raises(RequestError) as err:
            _request(**{api_name: value})
        assert err.value.status == 400 and err.value.param == api_name


def test_api_defaults_follow_the_dataclass_except_openais_temperature():
    from medtune.serving.schema import to_sampling_params

    params = to_sampling_params(_request(), default_max_tokens=99)
    want = {**{n: f.default for n, f in FIELDS.items()}, "temperature": 1.0, "max_new_tokens": 99}
    assert isinstance(params, GenerationSettings) and vars(params) == want


def test_web_sliders_show_the_dataclass_ranges_and_the_bots_settings():
    from medtune.serving.webui import SLIDERS, _controls

    gr = SimpleNamespace(Textbox=lambda **kw: ("box", kw),
                         Slider=lambda lo, hi, value, step, label: (lo, hi, value, step, label),
                         Checkbox=lambda **kw: ("checkbox", kw), Number=lambda **kw: ("number", kw))
    settings = GenerationSettings(max_new_tokens=33, temperature=0.7, top_p=0.9, repetition_penalty=1.2,
                                  thinking_budget=5)
    bot = SimpleNamespace(settings=settings, tokenizer=SimpleNamespace(chat_template="{{ enable_thinking }}"))
    _box, *sliders, (_, think), (_, budget) = _controls(gr, bot)
    assert think["visible"] and think["value"] and budget["value"] == 5
    assert [s[4] for s in sliders] == [slider(n)[3] for n in SLIDERS]
    for name, (lo, hi, value, step, _label) in zip(SLIDERS, sliders):
        assert (lo, hi, step) == slider(name)[:3] and value == getattr(settings, name)
        GenerationSettings(**{name: lo})  # both ends of a slider are valid settings
        GenerationSettings(**{name: hi})
        bounds = served_bounds(name)
        assert lo >= bounds.get("ge", lo) and hi <= bounds.get("le", hi)


@pytest.mark.parametrize("fields,message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"repetition_penalty": 0}, "repetition_penalty must be > 0"),
    ({"n": 0}, "n must be >= 1"),
    ({"stop": ["ok", ""]}, "stop must be non-empty strings"),
])
def test_out_of_bounds_settings_are_refused(fields, message):
    with pytest.raises(MedtuneError, match=message):
        GenerationSettings(**fields)


def test_settings_coerce_numbers_and_stop_lists():
    s = GenerationSettings(temperature=1, top_p=1, repetition_penalty=2, stop=["</s>"])
    assert (type(s.temperature), type(s.top_p), type(s.repetition_penalty), s.stop) == (float, float, float, ("</s>",))
    assert hash(s) == hash(GenerationSettings(temperature=1.0, repetition_penalty=2.0, stop=("</s>",)))


def test_infer_meta_records_params_under_their_old_names_and_order():
    from medtune.inference.batch import _params_record

    record = _params_record(GenerationSettings(max_new_tokens=8, seed=42))
    assert json.dumps(record) == ('{"max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0, '
                                  '"stop": [], "n": 1, "seed": 42}')
