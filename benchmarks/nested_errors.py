"""Why gold spans are missed, by kind (flat, inner, outer): what the model predicted instead,
and how far below its threshold the gold span scored.

    python benchmarks/nested_errors.py MODEL DATA.spacy [--gold-tokens] [--out DIR]

For every gold span of `doc.spans[key]` that the pipeline does not predict (same tokens and
label), the cause is the first of:
- `other_label`: the same tokens are predicted with another label;
- `one_boundary`: a predicted span of the gold label shares its start or its end (a boundary
  error, or the outer/inner span predicted in its place);
- `overlap`: a predicted span of the gold label overlaps it, sharing neither boundary;
- `nothing`: no predicted span of its label touches it.
The kinds are those of `spacy_globalpointer.scoring` (a middle layer counts as inner). The
gold span's own probability under the model (its label's calibrated sigmoid) is binned, to show
how many misses a lower threshold would reach. Writes DIR/nested_errors.{json,md}.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

TokenSpan = Tuple[int, int, str]  # token start, token end (exclusive), label
CAUSES = ("other_label", "one_boundary", "overlap", "nothing")
KINDS = ("flat", "inner", "outer")
BINS = (0.0, 0.01, 0.1, 0.3, 0.5)


def kind_of(kinds: Set[str]) -> str:
    """One kind per gold span: inner wins over outer (a middle layer is inner), else flat."""
    return "inner" if "inner" in kinds else "outer" if "outer" in kinds else "flat"


def cause(gold: TokenSpan, predicted: Set[TokenSpan]) -> Optional[str]:
    """Why `gold` is missed (None when it is predicted); see the module docstring."""
    if gold in predicted:
        return None
    start, end, label = gold
    if any((s, e) == (start, end) for s, e, _ in predicted):
        return "other_label"
    same = [(s, e) for s, e, lab in predicted if lab == label and s < end and start < e]
    if any(s == start or e == end for s, e in same):
        return "one_boundary"
    return "overlap" if same else "nothing"


def probability_bin(p: float) -> str:
    lows = [low for low in BINS if p >= low]
    low = lows[-1]
    high = BINS[BINS.index(low) + 1] if low != BINS[-1] else 1.0
    return f"[{low:g}, {high:g})"


def analyse(model: Path, data: Path, *, gold_tokens: bool, batch_size: int = 256) -> Dict:
    import spacy
    from spacy.tokens import DocBin

    from spacy_globalpointer.evaluate import _find_spans_key, unannotated_doc
    from spacy_globalpointer.pipe import sigmoid
    from spacy_globalpointer.scoring import span_kinds

    nlp = spacy.load(model)
    key = _find_spans_key(nlp)
    name = next(name for name, pipe in nlp.pipeline if getattr(pipe, "key", None) == key)
    component = nlp.get_pipe(name)
    labels = list(component.labels)
    scales, biases = component.calibration_arrays()
    gold_docs = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    counts: Counter = Counter()
    missed_p: Dict[str, List[float]] = {kind: [] for kind in KINDS}
    for begin in range(0, len(gold_docs), batch_size):
        golds = gold_docs[begin:begin + batch_size]
        docs = [unannotated_doc(nlp, doc, gold_tokens) for doc in golds]
        for pipe_name, pipe in nlp.pipeline:
            if pipe_name == name:
                scores = pipe.predict(docs)
                pipe.set_annotations(docs, scores)
            else:
                docs = list(pipe.pipe(docs))
        for index, (doc, ref) in enumerate(zip(docs, golds)):
            gold = [(span.start, span.end, span.label_) for span in ref.spans.get(key, [])]
            predicted = {(span.start, span.end, span.label_) for span in doc.spans.get(key, [])}
            doc_scores = component.model.ops.to_numpy(scores.doc(index))
            for span, kinds in zip(gold, span_kinds([(s, e) for s, e, _ in gold])):
                kind = kind_of(kinds)
                counts[kind, "gold"] += 1
                why = cause(span, predicted)
                counts[kind, why or "found"] += 1
                if why is None:
                    continue
                a, width = labels.index(span[2]), span[1] - span[0] - 1
                if width < doc_scores.shape[2]:
                    p = float(sigmoid(scales[a] * float(doc_scores[a, span[0], width]) + biases[a]))
                else:
                    p = 0.0  # longer than the band: never a candidate
                missed_p[kind].append(p)
                counts[kind, probability_bin(p)] += 1
    rows = {}
    for kind in KINDS:
        gold = counts[kind, "gold"]
        rows[kind] = {
            "gold": gold,
            "recall": counts[kind, "found"] / gold if gold else None,
            "missed": {why: counts[kind, why] for why in CAUSES},
            "missed_probability": {probability_bin(low): counts[kind, probability_bin(low)] for low in BINS},
        }
    return {"model": str(model), "data": str(data), "spans_key": key, "kinds": rows}


def format_markdown(report: Dict) -> str:
    bins = [probability_bin(low) for low in BINS]
    lines = [
        f"Missed gold spans of `{report['model']}` on `{report['data']}` (key `{report['spans_key']}`), "
        "as a share of the gold spans of each kind.",
        "",
        "| kind | gold | recall | " + " | ".join(CAUSES) + " | " + " | ".join(f"p in {b}" for b in bins) + " |",
        "|---|---:|---:|" + "---:|" * (len(CAUSES) + len(bins)),
    ]
    for kind, row in report["kinds"].items():
        if not row["gold"]:
            continue
        share = lambda n: f"{n} ({100 * n / row['gold']:.1f}%)"  # noqa: E731
        lines.append(
            f"| {kind} | {row['gold']} | {100 * row['recall']:.2f} | "
            + " | ".join(share(row["missed"][why]) for why in CAUSES) + " | "
            + " | ".join(share(row["missed_probability"][b]) for b in bins) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--gold-tokens", action="store_true", help="predict on the data's own tokens (GENIA)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = analyse(args.model, args.data, gold_tokens=args.gold_tokens)
    report["command"] = " ".join(["python", "benchmarks/nested_errors.py"] + list(argv if argv is not None else sys.argv[1:]))
    table = format_markdown(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "nested_errors.json").write_text(json.dumps(report, indent=2), encoding="utf8")
        (args.out / "nested_errors.md").write_text(f"Command: `{report['command']}`\n\n" + table, encoding="utf8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
