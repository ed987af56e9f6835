"""Retrieval with citations: a BM25 passage index over documents, and prompts augmented with it.

Example::

    medtune rag index kb/ notes.md faq.jsonl -o runs/kb-index          # zh / en detected
    medtune chat --model runs/sft --rag runs/kb-index --rag-k 3

    from medtune.inference.rag import Retriever, build_index
    build_index(["kb/"], "runs/kb-index")
    rag = Retriever.load("runs/kb-index", k=3)
    messages, citations = rag.augment([{"role": "user", "content": "糖尿病的一线用药是什么？"}])

Documents: ``.txt`` / ``.md`` files (one document each; the title is the first Markdown heading or
the file name), and ``.jsonl`` files (one document a line: ``text`` required, ``id`` / ``title`` /
``source`` optional); directories and globs expand to those. Each document is cut into passages of
about ``chunk_chars`` characters at paragraph, then sentence boundaries; a passage keeps its
document id, title, source file and line. Chinese is segmented with jieba (search mode), English
with CJK character bigrams added (names jieba does not know
still match), English is lower-cased, stop-worded and Snowball-stemmed; BM25 scoring is bm25s. The index directory
holds ``manifest.json`` (format version, language, tokenizer and library versions, each input's
sha256, counts), ``passages.jsonl`` and ``bm25/``; it is written to a temporary sibling and
swapped in whole.

Optionally (``embed=MODEL_DIR``, a local Hugging Face model: safetensors, no remote code) each
passage also gets a dense vector, the mean of the model's last hidden states, L2-normalised
(``embeddings.npy``); a query is then ranked by ``(1 - w) * bm25 / max(bm25) + w * cosine``
(``w`` = ``HYBRID_WEIGHT``). The manifest records the model's path and weights hash; a changed
model is refused at load.

The retrieved passages go into the **last user turn**, numbered, above the question (not into a
system message): every chat template renders a user turn, while some checkpoints' templates have
no system role or raise on one; a user's own system prompt stays as it is; and the sources belong
to the question they were retrieved for. History turns are sent as the user wrote them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from medtune.data.readers.records import parse_object_line
from medtune.errors import MedtuneError, where

FORMAT = "medtune-rag-index"
VERSION = 1
LANGUAGES = ("zh", "en")
DOC_SUFFIXES = (".txt", ".md", ".markdown", ".jsonl")
DEFAULT_CHUNK_CHARS = 400
HYBRID_WEIGHT = 0.5  # share of the dense (cosine) score in a hybrid index's ranking
EMBED_BATCH = 16
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"\w")
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;.])\s*")
PROMPT = {  # the block put above the question; {sources} is one "[n] text" line per passage
    "zh": "参考资料：\n{sources}\n\n请依据以上参考资料回答，并用[编号]标注出处。\n问题：{question}",
    "en": "Sources:\n{sources}\n\nAnswer from the sources above and cite them by number, like [1].\n"
          "Question: {question}",
}
log = logging.getLogger("medtune")


@dataclass
class Passage:
    id: str  # "<doc_id>#<n>"
    doc_id: str
    title: str
    source: str  # "file:line" where the passage starts
    text: str


@dataclass
class Hit:
    passage: Passage
    score: float


# ---------------------------------------------------------------------------------------------
# reading and chunking documents


def expand_inputs(entries) -> list[Path]:
    """Return the document files that ``entries`` (files, directories, globs) name, in order."""
    files: list[Path] = []
    for entry in entries:
        entry = str(entry)
        if glob.has_magic(entry):
            matched = sorted(Path(p) for p in glob.glob(entry, recursive=True) if Path(p).is_file())
            if not matched:
                raise MedtuneError(f"{entry}: the pattern matches no files")
        elif Path(entry).is_dir():
            indexes = [m.parent for m in Path(entry).rglob("manifest.json") if _is_index_manifest(m)]
            matched = sorted(p for p in Path(entry).rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES
                             and not any(p.is_relative_to(i) for i in indexes))  # not an index's own files
            if not matched:
                raise MedtuneError(f"{entry}: the directory holds no documents ({', '.join(DOC_SUFFIXES)})")
        elif Path(entry).is_file():
            matched = [Path(entry)]
        else:
            raise MedtuneError(f"{entry}: not found")
        for path in matched:
            if path.suffix.lower() not in DOC_SUFFIXES:
                raise MedtuneError(f"{path}: not a document file (use {', '.join(DOC_SUFFIXES)})")
        files += matched
    if not files:
        raise MedtuneError("no documents given")
    return files


def _is_index_manifest(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MedtuneError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise MedtuneError(f"{path}: cannot read it ({exc.strerror})") from None


def read_documents(path: Path, skipped: dict) -> list[dict]:
    """Return the documents of one file as ``{doc_id, title, source, line, text}``; blank ones are
    counted in ``skipped``."""
    text = _read_text(path)
    if path.suffix.lower() != ".jsonl":
        if not text.strip():
            skipped["empty document"] = skipped.get("empty document", 0) + 1
            return []
        heading = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)
        title = heading.group(1) if heading else path.stem
        return [{"doc_id": str(path), "title": title, "source": str(path), "line": 1, "text": text,
                 "by_line": True}]
    docs = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        place = where(path, n)
        row = parse_object_line(line, place)
        body = row.get("text")
        if not isinstance(body, str):
            raise MedtuneError(f'{place}: field "text" missing or not a string')
        for key in ("id", "title", "source"):
            if key in row and (not isinstance(row[key], (str, int)) or isinstance(row[key], bool)):
                raise MedtuneError(f'{place}: field "{key}" must be a string or an integer')
        if not body.strip():
            skipped["empty document"] = skipped.get("empty document", 0) + 1
            continue
        docs.append({"doc_id": str(row.get("id", place)), "title": str(row.get("title", "")),
                     "source": str(row.get("source", place)), "line": n, "text": body, "by_line": False})
    return docs


def chunk_document(doc: dict, chunk_chars: int) -> list[Passage]:
    """Return ``doc`` cut into passages of at most about ``chunk_chars`` characters: paragraphs are
    packed together, a longer paragraph is cut at sentence ends, a longer sentence at the limit."""
    pieces: list[tuple[int, str]] = []  # (line offset within the document, text)
    for offset, para in _paragraphs(doc["text"]):
        for part in _split_long(para, chunk_chars):
            pieces.append((offset, part))
    passages, buf, start = [], "", 0
    for offset, part in pieces:
        if buf and len(buf) + 1 + len(part) > chunk_chars:
            passages.append(_passage(doc, len(passages), start, buf))
            buf = ""
        if not buf:
            start = offset
        buf = f"{buf}\n{part}" if buf else part
    if buf:
        passages.append(_passage(doc, len(passages), start, buf))
    return passages


def _passage(doc: dict, n: int, line_offset: int, text: str) -> Passage:
    # A text file's passage points at the line it starts on; a .jsonl row keeps its own source
    # ("file:line", or the row's "source" field).
    source = where(doc["source"], doc["line"] + line_offset) if doc["by_line"] else doc["source"]
    return Passage(f"{doc['doc_id']}#{n}", doc["doc_id"], doc["title"], source, text)


def _paragraphs(text: str):
    """Yield ``(line offset, paragraph)`` for the blank-line separated paragraphs of ``text``."""
    lines, start = [], 0
    for i, line in enumerate(text.split("\n") + [""]):
        if line.strip():
            if not lines:
                start = i
            lines.append(line.strip())
        elif lines:
            yield start, " ".join(lines) if not _CJK.search(lines[0]) else "".join(lines)
            lines = []


def _split_long(para: str, limit: int) -> list[str]:
    if len(para) <= limit:
        return [para]
    out, buf = [], ""
    for sentence in (s for s in _SENTENCE_END.split(para) if s):
        while len(sentence) > limit:  # one sentence longer than a passage: cut it at the limit
            out += [buf] if buf else []
            out.append(sentence[:limit])
            sentence, buf = sentence[limit:], ""
        if buf and len(buf) + len(sentence) > limit:
            out.append(buf)
            buf = ""
        buf += sentence
    return out + ([buf] if buf else [])


# ---------------------------------------------------------------------------------------------
# languages and tokenization


def cjk_share(text: str) -> float:
    """Return the share of CJK characters among the CJK and Latin letters of ``text`` (0 if none)."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    return cjk / (cjk + latin) if cjk + latin else 0.0


def detect_language(texts) -> str:
    """Return ``zh`` when CJK characters are at least a fifth of the letters of ``texts``, else ``en``."""
    cjk = latin = 0
    for t in texts:
        cjk += len(_CJK.findall(t))
        latin += len(_LATIN.findall(t))
    # Latin letters per word are ~5 and Chinese characters per word ~1.5: a fifth is a Chinese majority.
    return "zh" if cjk and cjk >= 0.2 * (cjk + latin) else "en"


def query_language(text: str) -> str | None:
    """Return the language a query is written in (``zh`` / ``en``), or None when it has no letters."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if not cjk and not latin:
        return None
    return "zh" if cjk else "en"


class Analyzer:
    """Text -> index terms for one language; ``spec`` names it (and its library versions) for the manifest."""

    def __init__(self, language: str):
        if language not in LANGUAGES:
            raise MedtuneError(f"--lang {language}: choose auto, zh or en")
        import Stemmer
        from bm25s.stopwords import STOPWORDS_CHINESE, STOPWORDS_EN

        self.language = language
        self.stemmer = Stemmer.Stemmer("english")
        self.stopwords = set(STOPWORDS_EN) | (set(STOPWORDS_CHINESE) if language == "zh" else set())
        if language == "zh":
            import jieba

            jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter on stderr
            self._jieba = jieba
        self.spec = _analyzer_spec(language)

    def __call__(self, text: str) -> list[str]:
        text = text.lower()
        if self.language == "zh":  # jieba's words, plus character bigrams for names it does not know
            words = self._jieba.lcut_for_search(text)
            words += [run[i:i + 2] for run in _CJK_RUN.findall(text) for i in range(len(run) - 1)]
        else:
            words = re.findall(r"\w+", text)
        terms = [w.strip() for w in words if _WORD.search(w)]
        terms = [w for w in terms if w not in self.stopwords]
        return [self.stemmer.stemWord(w) if w.isascii() else w for w in terms]


def _analyzer_spec(language: str) -> dict:
    from importlib.metadata import version

    spec = {"language": language, "stemmer": f"snowball-english (PyStemmer {version('PyStemmer')})",
            "stopwords": "bm25s english" + (" + chinese" if language == "zh" else "")}
    spec["segmenter"] = (f"jieba {version('jieba')} search mode + CJK bigrams" if language == "zh"
                         else "regex \\w+")
    return spec


# ---------------------------------------------------------------------------------------------
# building and loading an index


def _bm25s():
    """Return the bm25s module, its debug logging ("Building index from tokens") turned down."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class Embedder:
    """Mean-pooled, L2-normalised last hidden states of a local Hugging Face model (CPU, fp32)."""

    def __init__(self, path):
        from medtune.data.readers.files import file_sha256

        folder = Path(path)
        weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not weights:
            raise MedtuneError(f"--embed {path}: not a local model directory with safetensors weights")
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder), use_safetensors=True, trust_remote_code=False).eval()
        except (OSError, ValueError) as exc:
            raise MedtuneError(f"--embed {path}: cannot load it ({str(exc).splitlines()[0]})") from None
        if self.tokenizer.pad_token is None:  # padding positions are masked out of the mean
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.path = str(folder.resolve())
        self.spec = {"model": self.path, "weights_sha256": {w.name: file_sha256(w) for w in weights},
                     "pooling": "mean of the last hidden states, L2-normalised", "weight": HYBRID_WEIGHT}

    def __call__(self, texts: list[str]):
        """Return an ``(n, dim)`` float32 array, one unit vector per text."""
        import numpy as np
        import torch

        out = []
        for start in range(0, len(texts), EMBED_BATCH):
            enc = self.tokenizer(texts[start:start + EMBED_BATCH], padding=True, truncation=True,
                                 max_length=512, return_tensors="pt")
            batch = {key: enc[key] for key in ("input_ids", "attention_mask")}  # decoders take no token types
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean.float(), dim=-1).numpy())
        return np.concatenate(out).astype("float32")


def build_index(entries, out, language: str = "auto", chunk_chars: int = DEFAULT_CHUNK_CHARS,
                embed=None) -> dict:
    """Index the documents ``entries`` name into the directory ``out`` (with dense vectors from the
    local model ``embed``, when given); return its manifest."""
    bm25s = _bm25s()

    from medtune.data.readers.files import file_sha256
    from medtune.files import atomic_dir

    if chunk_chars < 20:
        raise MedtuneError(f"--chunk-chars {chunk_chars}: must be at least 20")
    files, skipped, docs, inputs = expand_inputs(entries), {}, [], []
    for path in files:
        found = read_documents(path, skipped)
        docs += found
        inputs.append({"path": str(path), "sha256": file_sha256(path), "documents": len(found)})
    _check_unique_ids(docs)
    if not docs:
        raise MedtuneError(f"{', '.join(map(str, entries))}: no document with text "
                           f"({sum(skipped.values())} empty)")
    language = detect_language(d["text"] for d in docs) if language == "auto" else language
    analyzer = Analyzer(language)
    passages = [p for d in docs for p in chunk_document(d, chunk_chars)]
    terms = [analyzer(f"{p.title}\n{p.text}") for p in passages]
    if not any(terms):
        raise MedtuneError(f"{', '.join(map(str, entries))}: no passage has a {language} word to index")
    embedder = Embedder(embed) if embed else None
    vectors = embedder([f"{p.title}\n{p.text}" for p in passages]) if embedder else None
    retriever = bm25s.BM25()
    retriever.index(terms, show_progress=False)
    manifest = {
        "format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "language": language, "analyzer": analyzer.spec, "libraries": _library_versions(),
        "chunk_chars": chunk_chars, "inputs": inputs,
        "counts": {"files": len(files), "documents": len(docs), "passages": len(passages),
                   "skipped": skipped, "empty_passages": sum(not t for t in terms)},
        "embedding": None if embedder is None else {**embedder.spec, "dim": int(vectors.shape[1])},
    }
    with atomic_dir(out) as tmp:
        if vectors is not None:
            import numpy as np

            np.save(tmp / "embeddings.npy", vectors)
        retriever.save(str(tmp / "bm25"), show_progress=False)
        with open(tmp / "passages.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in passages)
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                           encoding="utf-8")
    return manifest


def _check_unique_ids(docs: list[dict]) -> None:
    seen: dict = {}
    for d in docs:
        if d["doc_id"] in seen:
            raise MedtuneError(f"{d['source']}: document id {d['doc_id']!r} also used by {seen[d['doc_id']]}")
        seen[d["doc_id"]] = d["source"]


def _library_versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("bm25s", "jieba", "PyStemmer")}


def index_fingerprint(path) -> str:
    """Return a short hash of an index's manifest (what ``infer`` records to know its answers' context)."""
    return hashlib.sha256(Path(path, "manifest.json").read_bytes()).hexdigest()[:16]


def read_manifest(path) -> dict:
    """Return an index directory's manifest; raise a one-line error for anything that is not a
    readable index of this version."""
    folder = Path(path)
    if not folder.is_dir():
        raise MedtuneError(f"--rag {path}: {'not a directory' if folder.exists() else 'not found'} "
                           "(build one with: medtune rag index DOCS -o INDEX)")
    file = folder / "manifest.json"
    if not file.is_file():
        raise MedtuneError(f"--rag {path}: not a medtune rag index (no manifest.json)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedtuneError(f"{file}: corrupt manifest ({exc}); rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MedtuneError(f"{file}: not a medtune rag index manifest")
    if manifest.get("version") != VERSION:
        raise MedtuneError(f"{file}: index format version {manifest.get('version')}, this medtune reads "
                           f"{VERSION}; rebuild the index")
    if manifest.get("language") not in LANGUAGES:
        raise MedtuneError(f"{file}:language: {manifest.get('language')!r} is not one of {', '.join(LANGUAGES)}")
    return manifest


class Retriever:
    """A loaded index: ``search`` returns scored passages, ``augment`` puts the top ``k`` into a
    conversation and returns its citations."""

    def __init__(self, path, manifest: dict, bm25, passages: list[Passage], k: int = 3, vectors=None,
                 embedder: Embedder | None = None):
        if k < 1:
            raise MedtuneError(f"--rag-k {k}: must be at least 1")
        self.path, self.manifest, self.bm25, self.passages, self.k = str(path), manifest, bm25, passages, k
        self.vectors, self.embedder = vectors, embedder
        self.language = manifest["language"]
        self.analyzer = Analyzer(self.language)
        self.fingerprint = index_fingerprint(path)

    @classmethod
    def load(cls, path, k: int = 3, language: str | None = None) -> Retriever:
        """Load the index at ``path``; ``language``: the language the caller expects (refused if
        the index was built for another), default whatever it was built for."""
        bm25s = _bm25s()

        manifest = read_manifest(path)
        file = Path(path) / "manifest.json"
        if language not in (None, "auto") and manifest["language"] != language:
            raise MedtuneError(f"{file}:language: the index was built for {manifest['language']}, "
                               f"not {language}; rebuild it with --lang {language}")
        current = _analyzer_spec(manifest["language"])
        if manifest.get("analyzer") != current:
            changed = sorted(k for k in set(current) | set(manifest.get("analyzer") or {})
                             if (manifest.get("analyzer") or {}).get(k) != current.get(k))
            raise MedtuneError(f"{file}:analyzer: built with another tokenizer ({', '.join(changed)}: "
                               f"{(manifest.get('analyzer') or {}).get(changed[0])!r}, now "
                               f"{current.get(changed[0])!r}); rebuild the index")
        passages = _read_passages(Path(path) / "passages.jsonl")
        try:
            bm25 = bm25s.BM25.load(str(Path(path) / "bm25"), show_progress=False)
        except Exception as exc:  # noqa: BLE001 - missing or damaged arrays: one line, rebuild
            raise MedtuneError(f"--rag {path}: corrupt index ({type(exc).__name__}: {exc}); rebuild it") from None
        if bm25.scores.get("num_docs") != len(passages) or len(passages) != manifest["counts"]["passages"]:
            raise MedtuneError(f"--rag {path}: corrupt index ({len(passages)} passages, the manifest says "
                               f"{manifest['counts']['passages']}, bm25 {bm25.scores.get('num_docs')}); rebuild it")
        vectors, embedder = _load_dense(Path(path), manifest, len(passages))
        return cls(path, manifest, bm25, passages, k, vectors, embedder)

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        """Return up to ``k`` passages for ``query``, best first; none when no query term is indexed."""
        import numpy as np

        k = min(k or self.k, len(self.passages))
        vocab = self.bm25.vocab_dict
        terms = [t for t in self.analyzer(query) if t in vocab]
        if not terms and self.vectors is None:
            return []
        scores = self.bm25.get_scores(terms) if terms else np.zeros(len(self.passages), dtype="float32")
        if self.vectors is not None:  # hybrid: BM25 scaled to [0, 1] plus the cosine similarity
            top = float(scores.max())
            dense = self.vectors @ self.embedder([query])[0]
            w = self.manifest["embedding"]["weight"]
            scores = (1 - w) * (scores / top if top > 0 else scores) + w * np.clip(dense, 0, None)
        best = np.argsort(-scores, kind="stable")[:k]
        return [Hit(self.passages[i], float(scores[i])) for i in best if scores[i] > 0]

    def augment(self, messages: list[dict]) -> tuple[list[dict], list[dict]]:
        """Return ``(messages, citations)``: the last user turn rewritten with the top-``k``
        passages numbered above the question, and one ``{n, doc_id, title, source, text, score}``
        per passage. A query in the other language than the index's, or one that shares no term
        with it, is left as it is (no citations; a warning for the language)."""
        last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last is None:
            return messages, []
        question = messages[last]["content"]
        lang = query_language(question)
        if lang is not None and lang != self.language:
            log.warning("rag: the question is in %s but the index %s is %s; answering without sources",
                        lang, self.path, self.language)
            return messages, []
        hits = self.search(question)
        if not hits:
            return messages, []
        citations = [{"n": n, "doc_id": h.passage.doc_id, "title": h.passage.title, "source": h.passage.source,
                      "text": h.passage.text, "score": round(h.score, 4)} for n, h in enumerate(hits, 1)]
        out = [dict(m) for m in messages]
        out[last]["content"] = render_context(question, citations, self.language)
        return out, citations


def _load_dense(folder: Path, manifest: dict, n: int):
    """Return ``(vectors, embedder)`` of a hybrid index, ``(None, None)`` for a BM25-only one."""
    spec = manifest.get("embedding")
    if not spec:
        return None, None
    import numpy as np

    try:
        vectors = np.load(folder / "embeddings.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MedtuneError(f"--rag {folder}: corrupt index (embeddings.npy: {exc}); rebuild it") from None
    if vectors.shape != (n, spec["dim"]):
        raise MedtuneError(f"--rag {folder}: corrupt index (embeddings {vectors.shape}, expected {(n, spec['dim'])}); "
                           "rebuild it")
    if not Path(spec["model"]).is_dir():
        raise MedtuneError(f"{folder / 'manifest.json'}:embedding.model: {spec['model']} is gone; the index needs "
                           "the model it was embedded with (rebuild it with --embed MODEL_DIR)")
    embedder = Embedder(spec["model"])
    if embedder.spec["weights_sha256"] != spec["weights_sha256"]:
        raise MedtuneError(f"{folder / 'manifest.json'}:embedding.model: the weights of {spec['model']} changed "
                           "since the index was built; rebuild it")
    return vectors, embedder


def render_context(question: str, citations: list[dict], language: str) -> str:
    """Return the user turn that carries ``citations`` as numbered sources above ``question``."""
    sources = "\n".join(f"[{c['n']}] {c['text']}" for c in citations)
    return PROMPT[language].format(sources=sources, question=question)


def _read_passages(file: Path) -> list[Passage]:
    if not file.is_file():
        raise MedtuneError(f"{file}: missing; rebuild the index")
    passages = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                passages.append(Passage(**json.loads(line)))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
                raise MedtuneError(f"{where(file, n)}: corrupt passage row; rebuild the index") from None
    return passages


def format_citations(citations: list[dict]) -> str:
    """Return citations as plain-text lines ``[n] title (source): text`` for chat and logs."""
    lines = []
    for c in citations:
        label = f"{c['title']} ({c['source']})" if c["title"] else c["source"]
        lines.append(f"[{c['n']}] {label}: {c['text']}")
    return "\n".join(lines)
