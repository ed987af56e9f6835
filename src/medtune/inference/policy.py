"""Serve-time safety policy: recognise emergencies, self-harm, overdoses, controlled-drug requests
and demands for a definitive diagnosis in a user's message, whatever the model would say.

Example::

    medtune serve api --model runs/sft                       # the bundled zh + en policy is on
    medtune serve api --model runs/sft --policy clinic.yaml  # your own
    medtune chat --model runs/sft --policy none              # off

    from medtune.inference.policy import load_policy
    policy = load_policy("default")
    verdict = policy.check("我胸口疼，一直出冷汗")
    verdict.actions   # [{'category': 'emergency', 'rule': 'chest_pain_sweating', 'action': 'prepend'}]
    verdict.prefix    # triage advice shown before the model's reply

A policy is a YAML file (the bundled one: ``assets/policy/default.yaml``)::

    version: 1
    categories:                 # order is priority: the first category matched is the request's
      self_harm:
        action: fixed           # prepend | append | fixed | refuse
        scope: conversation     # conversation | last_turn (default: conversation for emergency,
                                # self_harm, overdose; last_turn for controlled_drug, diagnosis)
        message:                # zh when the request has a Chinese character, else en (or one string)
          zh: 如果你有伤害自己的想法……
          en: If you are thinking about hurting yourself...
        rules:
          - id: suicide_intent
            any: ['想自杀', 'kill myself']             # one regex of the list matches
          - id: chest_pain_sweating
            all: [['胸痛', 'chest pain'], ['出汗', 'sweat']]   # every group has a match (AND)
            unless: ['有哪些症状', 'what are the symptoms']   # ...and none of these matches

Patterns are Python regular expressions matched case-insensitively anywhere in the message
(NFKC-normalised, so full-width letters and digits match too); a plain word is a keyword.
``prepend`` puts the message before the model's reply (triage advice), ``append`` after it (a
disclaimer), ``fixed`` answers with the message and never calls the model, ``refuse`` does the
same as a refusal. When several categories match, every action is recorded; the first
``fixed``/``refuse`` one answers, otherwise the prefixes and suffixes are joined in category order.

A conversation is checked whole, not only its last message: the last user message against every
category, and the earlier user messages against the categories whose risk persists across a
conversation (``scope: conversation``; by default emergency, self-harm and overdose): a user who
wrote "I have crushing chest pain and I'm sweating" and then "what should I take?", or who
mentioned suicide three turns ago, is still caught. A request for a controlled drug or a diagnosis
concerns the message that asks (``last_turn``), so an old one does not keep refusing. Each
category acts at most once per reply (its most recent matching user message wins); each action
names the message that matched (``turn``: its index in the request's messages, system messages
included, the same index as in the audit record's ``request``) and ``by: rule``. Only user
messages are read (the assistant's replies hold the policy's own crisis and triage texts), and the
reply's language is the last user message's. Consequence: once a self-harm message is in the
conversation, every later reply in it is the crisis message; a new conversation starts afresh.

Optionally, a classifier trained by medtune acts beside the rules (rule OR classifier)::

    classifier:
      model: ../runs/policy-classifier   # a stage: rm dir (full or LoRA); relative to this file
      threshold: 0.5                     # a category acts when its probability reaches this
      categories: [emergency, self_harm] # the categories it may flag (default: all)
      device: cpu

It scores each user message it may act on (see :mod:`medtune.inference.policy_classifier`); a
category no rule matched acts when the classifier's probability for it reaches ``threshold``, on
the same turns as the rules (the last, or every one for ``scope: conversation``), recorded as
``{"rule": "classifier", "by": "classifier", "score": p}``. The model loads with the policy, so a
missing or wrong one stops the command at start. Train and measure one with ``medtune eval
policy --train-pairs`` / ``--classifier`` and ``examples/policy_classifier.yaml``.
Errors in a policy file are one line naming ``file:line``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medtune.errors import MedtuneError, did_you_mean

CATEGORIES = ("emergency", "self_harm", "overdose", "controlled_drug", "diagnosis")
ACTIONS = ("prepend", "append", "fixed", "refuse")
LANGS = ("zh", "en")
POLICY_KEYS = ("version", "categories", "classifier")
CLASSIFIER_KEYS = ("model", "threshold", "categories", "device")
SCOPES = ("conversation", "last_turn")
PERSISTENT = ("emergency", "self_harm", "overdose")  # scope: conversation unless the file says otherwise
CATEGORY_KEYS = ("action", "message", "rules", "description", "scope")
RULE_KEYS = ("id", "any", "all", "unless")
_CJK = re.compile(r"[\u3400-\u9fff]")


def bundled_policy_path() -> Path:
    """Return the path of the bundled zh + en policy."""
    return Path(str(resources.files("medtune") / "assets" / "policy" / "default.yaml"))


@dataclass
class Rule:
    id: str
    groups: list[list[re.Pattern]]  # every group needs one match (``any`` is one group)
    unless: list[re.Pattern] = field(default_factory=list)

    def matches(self, text: str) -> bool:
        return (all(any(p.search(text) for p in group) for group in self.groups)
                and not any(p.search(text) for p in self.unless))


@dataclass
class Category:
    name: str
    action: str
    message: dict  # {"zh": ..., "en": ...}
    rules: list[Rule]
    scope: str = "last_turn"  # or "conversation": earlier user messages are checked too

    def first_rule(self, text: str) -> Rule | None:
        return next((r for r in self.rules if r.matches(text)), None)


@dataclass
class Verdict:
    """What the policy does with one request."""

    actions: list[dict] = field(default_factory=list)  # {"category", "rule", "action", "turn", "by"}
    fixed_reply: str | None = None
    prefix: str = ""
    suffix: str = ""

    @property
    def category(self) -> str:
        """The request's category (the first one matched), or ``none``."""
        return self.actions[0]["category"] if self.actions else "none"


@dataclass
class ClassifierSpec:
    """The policy file's ``classifier`` section: which model, when it acts, on which categories."""

    model: str                 # resolved against the policy file's folder
    threshold: float = 0.5     # a category acts when its probability reaches this
    categories: tuple = ()     # the categories it may flag (all of the policy's when empty)
    device: str = "cpu"
    line: int = 1              # where the section starts (for the load error)


@dataclass
class Policy:
    categories: list[Category]
    source: str = ""  # the file it came from
    sha256: str = ""
    classifier_spec: ClassifierSpec | None = None
    classifier: object = None  # loaded from classifier_spec by load_policy: ``probabilities(texts)``

    def check(self, text: str) -> Verdict:
        """Return the actions this policy takes on one user message ``text``."""
        return self.check_messages([{"role": "user", "content": text}])

    def check_messages(self, messages: list[dict]) -> Verdict:
        """Return the actions this policy takes on a conversation (``{"role", "content"}`` dicts):
        the last user message against every category, the earlier ones against the categories of
        ``scope: conversation``; one action per category, naming the message (``turn``) it matched."""
        turns = [(i, normalise(m["content"])) for i, m in enumerate(messages)
                 if m.get("role") == "user" and isinstance(m.get("content"), str)]
        verdict = Verdict()
        if not turns:
            return verdict
        lang = "zh" if _CJK.search(turns[-1][1]) else "en"
        probs = self._probabilities([(i, messages[i]["content"]) for i, _ in turns])
        prefixes, suffixes = [], []
        for cat in self.categories:
            looked_at = list(reversed(turns)) if cat.scope == "conversation" else turns[-1:]
            hit = next(((i, rule) for i, text in looked_at if (rule := cat.first_rule(text))), None)
            if hit is not None:
                action = {"category": cat.name, "rule": hit[1].id, "action": cat.action, "turn": hit[0], "by": "rule"}
            elif (found := self._classified(cat.name, looked_at, probs)) is not None:
                action = {"category": cat.name, "rule": "classifier", "action": cat.action, "turn": found[0],
                          "by": "classifier", "score": round(found[1], 4)}
            else:
                continue
            verdict.actions.append(action)
            message = cat.message.get(lang) or cat.message.get("en") or cat.message.get("zh")
            if cat.action in ("fixed", "refuse"):
                if verdict.fixed_reply is None:
                    verdict.fixed_reply = message
            elif cat.action == "prepend":
                prefixes.append(message)
            else:
                suffixes.append(message)
        if verdict.fixed_reply is None:
            verdict.prefix = "".join(m + "\n\n" for m in prefixes)
            verdict.suffix = "".join("\n\n" + m for m in suffixes)
        return verdict

    def _probabilities(self, turns: list[tuple[int, str]]) -> dict[int, dict]:
        """The classifier's label probabilities for the user messages it may act on ({} without
        one); it reads each message as sent (as it was trained), not normalised."""
        spec = self.classifier_spec
        if self.classifier is None or spec is None:
            return {}
        wanted = [c for c in self.categories if not spec.categories or c.name in spec.categories]
        picked = turns if any(c.scope == "conversation" for c in wanted) else turns[-1:]
        return dict(zip((i for i, _ in picked), self.classifier.probabilities([t for _, t in picked])))

    def _classified(self, name: str, looked_at, probs: dict) -> tuple[int, float] | None:
        """``(turn, probability)`` of the latest looked-at message the classifier puts in ``name``."""
        spec = self.classifier_spec
        if not probs or (spec.categories and name not in spec.categories):
            return None
        return next(((i, probs[i][name]) for i, _ in looked_at if i in probs and probs[i][name] >= spec.threshold),
                    None)


def normalise(text: str) -> str:
    """Return ``text`` NFKC-normalised with runs of whitespace made one space."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text or ""))


def load_policy(spec: str | Path | None) -> Policy | None:
    """Return the policy ``spec`` names: a YAML path, ``default`` (the bundled one) or ``none``/None
    (no policy). Raise a one-line :class:`MedtuneError` naming ``file:line`` on a bad file."""
    if spec is None or str(spec) == "none":
        return None
    path = bundled_policy_path() if str(spec) == "default" else Path(spec)
    if not path.is_file():
        raise MedtuneError(f"--policy {spec}: no such file (give a policy YAML, 'default' or 'none')")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MedtuneError(f"{path}: cannot read the policy ({exc})") from None
    import hashlib

    policy = parse_policy(text, str(path))
    policy.sha256 = hashlib.sha256(raw).hexdigest()
    if policy.classifier_spec is not None:
        from medtune.inference.policy_classifier import PolicyClassifier

        spec = policy.classifier_spec
        policy.classifier = PolicyClassifier.load(spec.model, spec.device, src=f"{path}:{spec.line}: classifier.model")
    return policy


def parse_policy(text: str, src: str = "<policy>") -> Policy:
    """Return the validated policy in YAML ``text`` (``src`` names it in errors)."""
    data = _read_lined_yaml(text, src)
    if not isinstance(data, _LinedDict):
        raise MedtuneError(f"{src}:1: a policy is a mapping with 'version' and 'categories'")
    _check_keys(data, POLICY_KEYS, src, "policy key")
    if data.get("version", 1) != 1:
        raise MedtuneError(f"{src}:{data.lines['version']}: version {data['version']!r} unknown (this medtune reads 1)")
    cats = data.get("categories")
    if not isinstance(cats, _LinedDict) or not cats:
        line = data.lines.get("categories", data.line)
        raise MedtuneError(f"{src}:{line}: 'categories' must be a mapping of category name to its rules")
    policy = Policy([_category(name, body, cats.lines[name], src) for name, body in cats.items()], source=src)
    if "classifier" in data:
        policy.classifier_spec = _classifier(data["classifier"], data.lines["classifier"], list(cats), src)
    return policy


def _classifier(body, line: int, names: list, src: str) -> ClassifierSpec:
    if not isinstance(body, _LinedDict):
        raise MedtuneError(f"{src}:{line}: 'classifier' must be a mapping (model, threshold, categories)")
    _check_keys(body, CLASSIFIER_KEYS, src, "classifier key")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise MedtuneError(f"{src}:{body.lines.get('model', line)}: classifier.model must be the path of a "
                           "model trained by stage: rm")
    threshold = body.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise MedtuneError(f"{src}:{body.lines.get('threshold', line)}: classifier.threshold must be a number "
                           f"in (0, 1], got {threshold!r}")
    cats = body.get("categories", [])
    if isinstance(cats, str) or not isinstance(cats, list):
        raise MedtuneError(f"{src}:{body.lines.get('categories', line)}: classifier.categories must be a list")
    for i, cat in enumerate(cats):
        if cat not in names:
            at = cats.lines[i] if isinstance(cats, _LinedList) else line
            raise MedtuneError(f"{src}:{at}: classifier.categories: '{cat}' is not a category of this policy"
                               f"{did_you_mean(str(cat), names)}")
    device = body.get("device", "cpu")
    if not isinstance(device, str) or not device.strip():
        raise MedtuneError(f"{src}:{body.lines.get('device', line)}: classifier.device must be text (cpu, cuda, ...)")
    base = Path(src).parent if src and not src.startswith("<") else Path(".")
    path = Path(model).expanduser()
    return ClassifierSpec(str(path if path.is_absolute() else base / path), float(threshold), tuple(cats),
                          device.strip(), line)


def _category(name, body, line: int, src: str) -> Category:
    if name not in CATEGORIES:
        raise MedtuneError(f"{src}:{line}: unknown category '{name}'{did_you_mean(name, CATEGORIES)}")
    if not isinstance(body, _LinedDict):
        raise MedtuneError(f"{src}:{line}: category '{name}' must be a mapping (action, message, rules)")
    _check_keys(body, CATEGORY_KEYS, src, f"key of category '{name}'")
    action = body.get("action")
    if action not in ACTIONS:
        at = body.lines.get("action", line)
        what = "has no action" if action is None else f"action '{action}' unknown"
        raise MedtuneError(f"{src}:{at}: category '{name}' {what}{did_you_mean(action or '', ACTIONS)}")
    message = _message(body.get("message"), body.lines.get("message", line), name, src)
    rules = body.get("rules")
    if not isinstance(rules, _LinedList) or not rules:
        raise MedtuneError(f"{src}:{body.lines.get('rules', line)}: category '{name}' needs a non-empty "
                           "'rules' list")
    parsed = [_rule(r, rules.lines[i], name, src) for i, r in enumerate(rules)]
    scope = body.get("scope", "conversation" if name in PERSISTENT else "last_turn")
    if scope not in SCOPES:
        raise MedtuneError(f"{src}:{body.lines.get('scope', line)}: category '{name}' scope {scope!r} unknown"
                           f"{did_you_mean(str(scope), SCOPES)} (conversation or last_turn)")
    seen = set()
    for rule, at in zip(parsed, rules.lines):
        if rule.id in seen:
            raise MedtuneError(f"{src}:{at}: rule id '{rule.id}' repeated in category '{name}'")
        seen.add(rule.id)
    return Category(name, action, message, parsed, scope)


def _message(message, line: int, name: str, src: str) -> dict:
    if isinstance(message, str) and message.strip():
        return {lang: message.strip() for lang in LANGS}
    if isinstance(message, _LinedDict) and message:
        for lang, text in message.items():
            at = message.lines[lang]
            if lang not in LANGS:
                raise MedtuneError(f"{src}:{at}: message language '{lang}' unknown{did_you_mean(lang, LANGS)}")
            if not isinstance(text, str) or not text.strip():
                raise MedtuneError(f"{src}:{at}: category '{name}': message.{lang} must be non-empty text")
        return {lang: text.strip() for lang, text in message.items()}
    raise MedtuneError(f"{src}:{line}: category '{name}' needs a message (text, or zh/en texts)")


def _rule(rule, line: int, cat: str, src: str) -> Rule:
    if not isinstance(rule, _LinedDict):
        raise MedtuneError(f"{src}:{line}: a rule of '{cat}' must be a mapping with id and any/all")
    _check_keys(rule, RULE_KEYS, src, "rule key")
    rid = rule.get("id")
    if not isinstance(rid, str) or not rid.strip():
        raise MedtuneError(f"{src}:{line}: a rule of '{cat}' needs an 'id' (text)")
    if ("any" in rule) == ("all" in rule):
        raise MedtuneError(f"{src}:{line}: rule '{rid}' needs exactly one of 'any' (patterns) or 'all' "
                           "(groups of patterns)")
    if "any" in rule:
        groups = [_patterns(rule["any"], rule.lines["any"], rid, src)]
    else:
        groups_raw = rule["all"]
        if not isinstance(groups_raw, _LinedList) or len(groups_raw) < 2:
            raise MedtuneError(f"{src}:{rule.lines['all']}: rule '{rid}': 'all' is a list of two or more "
                               "pattern lists")
        groups = [_patterns(g, at, rid, src) for g, at in zip(groups_raw, groups_raw.lines)]
    unless = _patterns(rule["unless"], rule.lines["unless"], rid, src) if "unless" in rule else []
    return Rule(rid.strip(), groups, unless)


def _patterns(items, line: int, rid: str, src: str) -> list[re.Pattern]:
    if isinstance(items, str):
        items = _LinedList([items], [line])
    if not isinstance(items, _LinedList) or not items:
        raise MedtuneError(f"{src}:{line}: rule '{rid}': expected a non-empty list of patterns")
    out = []
    for item, at in zip(items, items.lines):
        if not isinstance(item, str) or not item.strip():
            raise MedtuneError(f"{src}:{at}: rule '{rid}': a pattern must be non-empty text (got {item!r})")
        try:
            out.append(re.compile(normalise(item), re.IGNORECASE))
        except re.error as exc:
            raise MedtuneError(f"{src}:{at}: rule '{rid}': bad regex {item!r} ({exc})") from None
    return out


def _check_keys(node, allowed, src: str, what: str) -> None:
    for key in node:
        if key not in allowed:
            raise MedtuneError(f"{src}:{node.lines[key]}: unknown {what} '{key}'{did_you_mean(key, allowed)}")


class _LinedDict(dict):
    """A YAML mapping that remembers the line of itself (``line``) and of each key (``lines``)."""

    line: int = 1
    lines: dict


class _LinedList(list):
    """A YAML sequence that remembers the line of each item (``lines``)."""

    def __init__(self, items=(), lines=()):
        super().__init__(items)
        self.lines = list(lines)


def _read_lined_yaml(text: str, src: str):
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        out = _LinedDict()
        out.line, out.lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise MedtuneError(f"{src}:{key_node.start_mark.line + 1}: key '{key}' repeated")
            out[key] = loader.construct_object(value_node, deep=True)
            out.lines[key] = key_node.start_mark.line + 1
        return out

    def sequence(loader, node):
        return _LinedList([loader.construct_object(n, deep=True) for n in node.value],
                          [n.start_mark.line + 1 for n in node.value])

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MedtuneError(f"{src}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
