"""Evaluate a trained pipeline on a DocBin, and render its predictions with displacy."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import spacy
import srsly
from spacy import displacy
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from .scoring import KINDS

PathLike = Union[str, Path]


def _find_component(nlp):
    for name, pipe in nlp.pipeline:
        if getattr(pipe, "key", None) and hasattr(pipe, "threshold"):
            return pipe
    raise ValueError(f"The pipeline {nlp.pipe_names} has no global_pointer component.")


def _find_spans_key(nlp) -> str:
    return _find_component(nlp).key


def evaluate(
    model: PathLike,
    data: PathLike,
    *,
    output_json: Optional[PathLike] = None,
    output_md: Optional[PathLike] = None,
    batch_size: int = 256,
    gold_tokens: bool = False,
    threshold: Optional[float] = None,
    nested_threshold: Optional[float] = None,
    gpu_id: int = -1,
) -> Dict[str, Any]:
    """Score `model` on the gold spans in `data` with spaCy's Scorer.

    Returns the overall and per-type P/R/F for the component's spans key and the recall
    of nested, flat, inner, outer (and long) gold spans, and writes them as JSON and as
    a markdown table when paths are given. gold_tokens: predict on the data's own tokens
    (for data converted with its own tokens, such as GENIA) instead of the tokenizer's.
    threshold, nested_threshold: decide with these instead of the saved ones (None: as saved).
    gpu_id: predict on this GPU (as `spacy evaluate --gpu-id`); -1 for the CPU.
    """
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    nlp = spacy.load(model)
    component = _find_component(nlp)
    key = component.key
    if threshold is not None:
        component.threshold = threshold
    if nested_threshold is not None:
        component.nested_threshold = nested_threshold
    gold = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    if not gold:
        raise ValueError(f"{data} holds no docs to evaluate on.")
    examples = [Example(unannotated_doc(nlp, doc, gold_tokens), doc) for doc in gold]
    scores = nlp.evaluate(examples, batch_size=batch_size)
    result = {
        "model": str(model),
        "data": str(data),
        "spans_key": key,
        "threshold": component.threshold,
        "nested_threshold": getattr(component, "nested_threshold", None),
        "n_docs": len(gold),
        "n_gold_spans": sum(len(doc.spans.get(key, [])) for doc in gold),
        "p": scores[f"spans_{key}_p"],
        "r": scores[f"spans_{key}_r"],
        "f": scores[f"spans_{key}_f"],
        "per_type": scores.get(f"spans_{key}_per_type", {}),
        "recall_by_kind": {
            kind: scores[f"spans_{key}_{kind}_r"] for kind in KINDS + ("long",) if f"spans_{key}_{kind}_r" in scores
        },
        "words_per_second": scores.get("speed"),
    }
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        srsly.write_json(output_json, result)
    if output_md:
        Path(output_md).parent.mkdir(parents=True, exist_ok=True)
        Path(output_md).write_text(format_table(result), encoding="utf8")
    return result


def unannotated_doc(nlp, doc: Doc, gold_tokens: bool = True) -> Doc:
    """What the pipeline reads for gold `doc`: a new doc of its own words (gold_tokens) or of its
    text through the pipeline's tokenizer; no annotations either way."""
    if not gold_tokens:
        return nlp.make_doc(doc.text)
    return Doc(nlp.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])


def format_table(result: Dict[str, Any]) -> str:
    """A markdown table of P/R/F (in %) overall and per type."""
    lines = [
        f"Evaluation of `{result['model']}` on `{result['data']}` "
        f"({result['n_docs']} docs, {result['n_gold_spans']} gold spans, key `{result['spans_key']}`)",
        "",
        "| type | P | R | F |",
        "|---|---:|---:|---:|",
    ]
    rows = [("**all**", result)] + sorted(result["per_type"].items())
    for name, prf in rows:
        lines.append(f"| {name} | {prf['p'] * 100:.2f} | {prf['r'] * 100:.2f} | {prf['f'] * 100:.2f} |")
    by_kind = {kind: r for kind, r in result.get("recall_by_kind", {}).items() if r is not None}
    if by_kind:
        lines += ["", "Recall by kind of gold span (nested: inside or containing another gold span):", "",
                  "| " + " | ".join(by_kind) + " |", "|" + "---:|" * len(by_kind),
                  "| " + " | ".join(f"{r * 100:.2f}" for r in by_kind.values()) + " |"]
    return "\n".join(lines) + "\n"


def visualize(
    model: PathLike, data: PathLike, output_html: PathLike, *, limit: int = 50
) -> int:
    """Render predicted spans (overlaps visible) of the first `limit` docs to an HTML page.

    Returns the number of docs rendered.
    """
    nlp = spacy.load(model)
    key = _find_spans_key(nlp)
    texts: List[str] = [doc.text for doc in DocBin().from_disk(data).get_docs(nlp.vocab)][:limit]
    docs = list(nlp.pipe(texts))
    html = displacy.render(docs, style="span", page=True, options={"spans_key": key})
    Path(output_html).parent.mkdir(parents=True, exist_ok=True)
    Path(output_html).write_text(html, encoding="utf8")
    return len(docs)
