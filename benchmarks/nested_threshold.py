"""Sweep global_pointer's threshold and nested_threshold on dev; score the chosen pairs on test.

    python benchmarks/nested_threshold.py MODEL dev.spacy [--test test.spacy] [--gold-tokens] \
        [--thresholds 0.3,0.4,0.5] [--nested none,0.4,0.3,0.2,0.1] [--min-ratio 0.85] [--out DIR]

The pipeline runs once over each DocBin; every (threshold, nested_threshold) pair then decodes
the same span scores with the component's own `set_annotations` and is scored with its own
scorer (P/R/F and the recall of nested and flat gold spans). Three pairs are chosen on dev:
the pipeline as saved, the best F1, and the best F1 among the pairs whose nested recall is at
least `--min-ratio` times the flat recall; with `--test`, each of them is scored once on test.
Writes DIR/nested_threshold.{json,md}.

A pipeline without global_pointer but with spaCy's `spancat` gets the same sweep of spancat's
`threshold` (it has no nested_threshold), so a peer's threshold can be chosen on dev the same way.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

Batches = List[Tuple[list, Any]]  # (predicted docs, span scores) per batch


def parse_grid(text: str) -> List[Optional[float]]:
    values = []
    for item in text.split(","):
        item = item.strip()
        values.append(None if item.lower() == "none" else float(item))
    return values


def run_to_scores(nlp, component, gold: Sequence, *, gold_tokens: bool, batch_size: int) -> Batches:
    """The pipeline up to the component, then its span scores, batch by batch."""
    from spacy_globalpointer.evaluate import unannotated_doc

    before = [proc for name, proc in nlp.pipeline[: nlp.pipe_names.index(component.name)]]
    batches = []
    for i in range(0, len(gold), batch_size):
        docs = [unannotated_doc(nlp, doc, gold_tokens) for doc in gold[i : i + batch_size]]
        for proc in before:
            docs = list(proc.pipe(docs))
        batches.append((docs, component.predict(docs)))
    return batches


def find_span_component(nlp):
    """global_pointer, or else spaCy's spancat, whose threshold is the only one it has."""
    from spacy_globalpointer.evaluate import _find_component

    try:
        return _find_component(nlp)
    except ValueError:
        for name, proc in nlp.pipeline:
            if nlp.get_pipe_meta(name).factory == "spancat":
                return proc
        raise ValueError(f"The pipeline {nlp.pipe_names} has neither a global_pointer nor a spancat component.")


def has_nested_threshold(component) -> bool:
    return hasattr(component, "nested_threshold")


def get_thresholds(component) -> Tuple[float, Optional[float]]:
    if has_nested_threshold(component):
        return component.threshold, component.nested_threshold
    return component.cfg["threshold"], None


def set_thresholds(component, threshold: float, nested: Optional[float]) -> None:
    if has_nested_threshold(component):
        component.threshold = threshold
        component.nested_threshold = nested
    elif nested is not None:
        raise ValueError(f"{component.name!r} has no nested_threshold (asked for {nested:g}).")
    else:
        component.cfg["threshold"] = threshold


def score_pair(component, batches: Batches, gold: Sequence, threshold: float, nested: Optional[float]) -> Dict[str, Any]:
    from spacy.training import Example

    from spacy_globalpointer.scoring import recall_by_kind

    set_thresholds(component, threshold, nested)
    predicted = []
    for docs, scores in batches:
        component.set_annotations(docs, scores)
        predicted.extend(docs)
    key = component.key
    examples = [Example(p, g) for p, g in zip(predicted, gold)]
    scores = component.scorer(examples, spans_key=key)
    if f"spans_{key}_flat_r" not in scores:  # spaCy's spancat scorer: P/R/F only
        scores.update(recall_by_kind(examples, key))
    flat, nested_r = scores.get(f"spans_{key}_flat_r"), scores.get(f"spans_{key}_nested_r")
    return {
        "threshold": threshold, "nested_threshold": nested,
        "p": scores[f"spans_{key}_p"], "r": scores[f"spans_{key}_r"], "f": scores[f"spans_{key}_f"],
        "flat_r": flat, "nested_r": nested_r,
        "ratio": nested_r / flat if nested_r is not None and flat else None,
        "n_predicted": sum(len(doc.spans[key]) for doc in predicted),
    }


def choose(rows: List[Dict[str, Any]], saved: Tuple[float, Optional[float]], min_ratio: float) -> Dict[str, Dict]:
    def pair(row):
        return (row["threshold"], row["nested_threshold"])

    chosen = {"as saved": next(row for row in rows if pair(row) == saved), "best F": max(rows, key=lambda r: r["f"])}
    meeting = [row for row in rows if row["ratio"] is not None and row["ratio"] >= min_ratio]
    if meeting:
        chosen[f"best F with nested/flat >= {min_ratio:g}"] = max(meeting, key=lambda r: r["f"])
    return chosen


def sweep(model: Path, dev: Path, *, test: Optional[Path], gold_tokens: bool, thresholds: Sequence[float],
          nested: Sequence[Optional[float]], min_ratio: float, batch_size: int = 256) -> Dict[str, Any]:
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.load(model)
    component = find_span_component(nlp)
    saved = get_thresholds(component)
    grid = sorted({*thresholds, saved[0]}, reverse=True)
    if not has_nested_threshold(component):
        nested = []
    pairs = [(t, n) for t in grid for n in ([None] + [n for n in nested if n is not None and n < t])]
    if saved not in pairs:
        pairs.append(saved)

    def read(path):
        docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
        if not docs:
            raise ValueError(f"{path} holds no docs.")
        return docs

    dev_gold = read(dev)
    dev_batches = run_to_scores(nlp, component, dev_gold, gold_tokens=gold_tokens, batch_size=batch_size)
    rows = [score_pair(component, dev_batches, dev_gold, t, n) for t, n in pairs]
    chosen = choose(rows, saved, min_ratio)
    result: Dict[str, Any] = {
        "model": str(model), "component": component.name, "dev": str(dev), "test": str(test) if test else None, "gold_tokens": gold_tokens,
        "min_ratio": min_ratio, "saved": list(saved), "dev_rows": rows,
        "chosen": {name: {"threshold": row["threshold"], "nested_threshold": row["nested_threshold"], "dev": row}
                   for name, row in chosen.items()},
    }
    if test:
        test_gold = read(test)
        test_batches = run_to_scores(nlp, component, test_gold, gold_tokens=gold_tokens, batch_size=batch_size)
        for entry in result["chosen"].values():
            entry["test"] = score_pair(component, test_batches, test_gold, entry["threshold"], entry["nested_threshold"])
    return result


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _nested(value: Optional[float]) -> str:
    return "off" if value is None else f"{value:g}"


def format_markdown(result: Dict[str, Any], command: str) -> str:
    lines = [
        f"`{result['model']}` ({result['component']}): threshold"
        + (" and nested_threshold" if any(row["nested_threshold"] is not None for row in result["dev_rows"]) else "")
        + f" swept on `{result['dev']}`"
        + (f", the chosen pairs scored once on `{result['test']}`" if result["test"] else "")
        + ". Command: `" + command + "`",
        "",
        "| choice (on dev) | threshold | nested_threshold | dev F | dev nested / flat |"
        + (" test F | test P | test R | test flat R | test nested R | test nested / flat |" if result["test"] else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" * 6 if result["test"] else ""),
    ]
    for name, entry in result["chosen"].items():
        dev = entry["dev"]
        line = f"| {name} | {entry['threshold']:g} | {_nested(entry['nested_threshold'])} | {_pct(dev['f'])} | {_ratio(dev['ratio'])} |"
        if "test" in entry:
            t = entry["test"]
            line += (f" {_pct(t['f'])} | {_pct(t['p'])} | {_pct(t['r'])} | {_pct(t['flat_r'])} | {_pct(t['nested_r'])}"
                     f" | {_ratio(t['ratio'])} |")
        lines.append(line)
    lines += ["", "Every pair on dev:", "",
              "| threshold | nested_threshold | P | R | F | flat R | nested R | nested / flat | spans predicted |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["dev_rows"]:
        lines.append(
            f"| {row['threshold']:g} | {_nested(row['nested_threshold'])} | {_pct(row['p'])} | {_pct(row['r'])} "
            f"| {_pct(row['f'])} | {_pct(row['flat_r'])} | {_pct(row['nested_r'])} | {_ratio(row['ratio'])} "
            f"| {row['n_predicted']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dev", type=Path, help="DocBin the pairs are chosen on")
    parser.add_argument("--test", type=Path, help="DocBin the chosen pairs are scored on, once each")
    parser.add_argument("--gold-tokens", action="store_true", help="predict on the DocBins' own tokens (e.g. GENIA)")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5", help="comma-separated (the saved one is added)")
    parser.add_argument("--nested", default="none,0.4,0.3,0.25,0.2,0.15,0.1",
                        help="nested thresholds, comma-separated; 'none' is off; only those below a threshold are paired "
                             "(ignored for spancat, which has none)")
    parser.add_argument("--min-ratio", type=float, default=0.85, help="nested / flat recall the third choice must reach")
    parser.add_argument("--out", type=Path, help="folder for nested_threshold.{json,md}")
    args = parser.parse_args(argv)
    result = sweep(args.model, args.dev, test=args.test, gold_tokens=args.gold_tokens,
                   thresholds=[float(t) for t in args.thresholds.split(",")], nested=parse_grid(args.nested),
                   min_ratio=args.min_ratio)
    command = "python benchmarks/nested_threshold.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = format_markdown(result, command)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "nested_threshold.json").write_text(json.dumps(result, indent=2), encoding="utf8")
        (args.out / "nested_threshold.md").write_text(table, encoding="utf8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
