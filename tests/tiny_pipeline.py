"""A tiny trained global_pointer pipeline for the robustness, serialization and
multiprocessing tests. Not a test module: imported by them."""
from typing import Dict, List, Optional, Sequence, Tuple

import spacy
from spacy.language import Language
from spacy.tokens import Span
from spacy.training import Example
from thinc.api import fix_random_seed

SpanSpec = Tuple[int, int, str]  # token start, token end (exclusive), label

EN_DATA: List[Tuple[str, List[SpanSpec]]] = [
    ("Alice lives in New York City", [(0, 1, "PER"), (3, 6, "LOC"), (4, 6, "LOC")]),
    ("Bob works at Acme Corp in Paris", [(0, 1, "PER"), (3, 5, "ORG"), (6, 7, "LOC")]),
    ("New York is big", [(0, 2, "LOC")]),
    ("The Bank of New York hired Carol", [(1, 5, "ORG"), (3, 5, "LOC"), (6, 7, "PER")]),
]
# blank("zh") splits into characters, so spans are character offsets here.
ZH_DATA: List[Tuple[str, List[SpanSpec]]] = [
    ("彭小军认为，国内银行现在走的是台湾的发卡模式", [(0, 3, "name"), (15, 17, "address")]),
    ("北京大学的张三去了上海", [(0, 4, "organization"), (0, 2, "address"), (5, 7, "name"), (9, 11, "address")]),
    ("招商银行在深圳", [(0, 4, "company"), (5, 7, "address")]),
]
# Very short words so the widest gold span (4 tokens) tells max_span_length checks apart.
WIDE_TEXT = "a b c d e f g h i j"

# Small tok2vec: these tests check behaviour, not accuracy, and run on a shared 2-core box.
SMALL_MODEL = {
    "@architectures": "spacy-globalpointer.GlobalPointer.v1",
    "head_size": 16,
    "tok2vec": {
        "@architectures": "spacy.Tok2Vec.v2",
        "embed": {
            "@architectures": "spacy.MultiHashEmbed.v2",
            "width": 32,
            "rows": [500, 100, 200, 200],
            "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
            "include_static_vectors": False,
        },
        "encode": {
            "@architectures": "spacy.MaxoutWindowEncoder.v2",
            "width": 32,
            "depth": 2,
            "window_size": 1,
            "maxout_pieces": 3,
        },
    },
}


def make_examples(
    nlp: Language, data: Sequence[Tuple[str, List[SpanSpec]]], key: str = "sc"
) -> List[Example]:
    examples = []
    for text, spans in data:
        predicted = nlp.make_doc(text)
        reference = nlp.make_doc(text)
        reference.spans[key] = [Span(reference, s, e, label=label) for s, e, label in spans]
        examples.append(Example(predicted, reference))
    return examples


def build_tiny(
    lang: str = "en",
    *,
    data: Optional[Sequence[Tuple[str, List[SpanSpec]]]] = None,
    steps: int = 30,
    seed: int = 0,
    config: Optional[Dict] = None,
) -> Tuple[Language, List[Example], List[float]]:
    """A blank pipeline with a small global_pointer trained for `steps` updates.

    Returns the pipeline, its training examples and the loss after each update.
    """
    fix_random_seed(seed)
    if data is None:
        data = EN_DATA if lang == "en" else ZH_DATA
    nlp = spacy.blank(lang)
    nlp.add_pipe("global_pointer", config={"model": SMALL_MODEL, **(config or {})})
    examples = make_examples(nlp, data)
    optimizer = nlp.initialize(lambda: examples)
    losses = []
    for _ in range(steps):
        losses.append(nlp.update(examples, sgd=optimizer)["global_pointer"])
    return nlp, examples, losses


def span_tuples(spans) -> List[SpanSpec]:
    return [(span.start, span.end, span.label_) for span in spans]


def predicted_spans(nlp: Language, text: str, key: str = "sc") -> List[SpanSpec]:
    """The spans `nlp` writes for `text` (keeps the doc alive: a SpanGroup holds it weakly)."""
    doc = nlp(text)
    return span_tuples(doc.spans[key])


def pipe_predictions(nlp: Language, texts, **pipe_kwargs) -> List[dict]:
    """Spans, scores and ents of `nlp.pipe(texts, **pipe_kwargs)`, as JSON-ready dicts."""
    out = []
    for doc in nlp.pipe(texts, **pipe_kwargs):
        group = doc.spans["sc"]
        out.append({
            "spans": [[s.start, s.end, s.label_] for s in group],
            "scores": group.attrs["scores"].tolist(),
            "ents": [[e.start, e.end, e.label_] for e in doc.ents],
        })
    return out
