"""The safety policy's optional trained classifier: a ``stage: rm`` reward model that scores a
request followed by a category name, trained so the request's own category outscores every other.

Example::

    medtune eval policy --train-pairs runs/policy/pairs.jsonl        # pairs from the dev split only
    medtune model tiny --hidden 64 -o runs/tiny                      # or any causal LM
    medtune train examples/policy_classifier.yaml base.path=runs/tiny
    medtune eval policy --classifier runs/policy-classifier/rm       # rules vs rules + classifier, test split

    # in a policy YAML (the path is relative to the policy file):
    classifier: {model: ../runs/policy-classifier/rm, threshold: 0.6, categories: [emergency, self_harm]}

    from medtune.inference.policy_classifier import PolicyClassifier
    clf = PolicyClassifier.load("runs/policy-classifier/rm")
    clf.probabilities(["我胸口疼，一直出冷汗"])   # [{'emergency': 0.71, 'self_harm': 0.02, ..., 'none': 0.12}]

Training data (:func:`pair_records`): for each labelled request, one preference pair per other
label — prompt the request, ``chosen`` its category's name (``emergency``, …, ``none``), ``rejected``
another's — so a plain ``stage: rm`` run (Bradley-Terry on the pair) learns a score for
(request, label). At serve time each user message is rendered with each of the six labels as the
assistant's answer, through the reward model's chat template exactly as the rm stage encodes a
pair, scored at the last token, and the six scores become probabilities by a softmax. The policy
acts on a category when its probability reaches ``threshold`` and no rule of the category matched;
the action is recorded ``by: classifier`` with the ``score``.
"""

from __future__ import annotations

import json
from pathlib import Path

from medtune.errors import MedtuneError

LABELS = ("emergency", "self_harm", "overdose", "controlled_drug", "diagnosis", "none")
MAX_CHARS = 2000  # a longer message is scored on its first MAX_CHARS characters


def pair_records(rows: list[dict]) -> list[dict]:
    """Return the ``stage: rm`` preference pairs of labelled requests ``{text, category}``: one
    pair per label other than the request's own (``{"conversations", "chosen", "rejected"}``)."""
    return [{"conversations": [{"from": "human", "value": row["text"]}], "chosen": row["category"], "rejected": other}
            for row in rows for other in LABELS if other != row["category"]]


class PolicyClassifier:
    """A reward model dir written by ``stage: rm`` on :func:`pair_records`, ready to score."""

    def __init__(self, model, tokenizer, path: str = ""):
        self.model, self.tokenizer, self.path = model, tokenizer, path

    @classmethod
    def load(cls, path, device: str = "cpu", src: str = "classifier.model") -> PolicyClassifier:
        """Return the classifier in ``path`` (a full rm output or its LoRA adapter), in eval mode;
        ``src`` names the setting in the one-line errors."""
        from medtune.models import load

        p = Path(path)
        config = p / ("adapter_config.json" if load.is_adapter_dir(p) else "config.json")
        if not config.is_file():
            raise MedtuneError(f"{src}: '{path}' is not a model dir written by stage: rm (no {config.name})")
        try:
            meta = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MedtuneError(f"{src}: '{path}': cannot read {config.name} ({exc})") from None
        if load.is_adapter_dir(p):
            if meta.get("task_type") != "SEQ_CLS":
                raise MedtuneError(f"{src}: '{path}' is an adapter of task {meta.get('task_type')}, not a "
                                   "classifier; train one with stage: rm")
        elif not any(a.endswith("ForSequenceClassification") for a in meta.get("architectures") or []) \
                or len(meta.get("id2label") or {0: 0, 1: 1}) != 1:
            raise MedtuneError(f"{src}: '{path}' is not a one-score classifier (train one with stage: rm on "
                               "'medtune eval policy --train-pairs')")
        tokenizer = load.load_tokenizer(str(p))
        if load.is_adapter_dir(p):
            model = load.merge_adapter(load.load_classifier(load.adapter_base(str(p)), "float32", device), str(p))
        else:
            model = load.load_classifier(str(p), "float32", device)
        model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
        model.requires_grad_(False)
        return cls(model.eval(), tokenizer, str(p))

    def probabilities(self, texts: list[str]) -> list[dict[str, float]]:
        """Return, for each message in ``texts``, the probability of each label (they sum to 1)."""
        import torch

        from medtune.data.tokenize.examples import encode_conversation
        from medtune.data.tokenize.spans import Conversation

        if not texts:
            return []
        seqs = [encode_conversation(self.tokenizer, Conversation([{"role": "user", "content": text[:MAX_CHARS]},
                                                                  {"role": "assistant", "content": label}]))[0]
                for text in texts for label in LABELS]
        width, pad = max(map(len, seqs)), self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        device = next(self.model.parameters()).device
        with torch.no_grad():
            scores = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()
        probs = scores.view(len(texts), len(LABELS)).softmax(-1).cpu().tolist()
        return [dict(zip(LABELS, row)) for row in probs]
