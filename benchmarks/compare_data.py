"""The data of benchmarks/compare.py: the train and dev DocBins sliced and written once for every
system, with `ner_*` copies whose `doc.ents` are the non-overlapping gold spans, their span
statistics, and spancat's longest suggested n-gram."""
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


def _require_docbin(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such DocBin (.spacy file); convert the data first")


def _read_docs(path: Path, vocab, limit: int) -> list:
    from spacy.tokens import DocBin

    _require_docbin(path)
    docs = list(DocBin().from_disk(path).get_docs(vocab))
    return docs[:limit] if limit else docs


def _span_stats(docs: list, key: str) -> Dict[str, Any]:
    spans = [span for doc in docs if key in doc.spans for span in doc.spans[key]]
    labels: Dict[str, int] = {}
    lengths: Dict[int, int] = {}
    for span in spans:
        labels[span.label_] = labels.get(span.label_, 0) + 1
        lengths[len(span)] = lengths.get(len(span), 0) + 1
    return {
        "n_docs": len(docs),
        "n_docs_with_key": sum(key in doc.spans for doc in docs),
        "n_words": sum(len(doc) for doc in docs),
        "n_spans": len(spans),
        "longest_span": max((len(span) for span in spans), default=0),
        "labels": dict(sorted(labels.items())),
        "span_lengths": {str(n): lengths[n] for n in sorted(lengths)},
    }


def count_longer(stats: Dict[str, Any], n: int) -> int:
    """How many of a split's gold spans are longer than `n` tokens (from `_span_stats`)."""
    return sum(count for length, count in stats["span_lengths"].items() if int(length) > n)


def _as_ents(docs: list, key: str) -> Tuple[list, int]:
    """Copies of the docs whose `doc.ents` are the longest non-overlapping subset of
    `doc.spans[key]` (spacy.util.filter_spans), and how many gold spans were dropped."""
    from spacy.util import filter_spans

    out, dropped = [], 0
    for doc in docs:
        doc = doc.copy()
        spans = list(doc.spans[key]) if key in doc.spans else []
        kept = filter_spans(spans)
        dropped += len(spans) - len(kept)
        doc.set_ents(kept, default="outside")
        out.append(doc)
    return out, dropped


# Bump when what prepare_corpora writes changes, so that older prepared folders are redone.
CORPUS_FORMAT = 2


def _source_stamp(path: Path, limit: int) -> Dict[str, Any]:
    _require_docbin(path)
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "limit": limit}


def prepare_corpora(
    train: Path, dev: Path, out: Path, *, lang: str, spans_key: str, limit_train: int = 0, limit_dev: int = 0,
    folder: Optional[Path] = None,
) -> Dict[str, Any]:
    """Write the (sliced) train/dev DocBins for span systems and `ner_*` copies for `ner` into
    `folder` (default OUT/corpus). A folder already prepared from the same files (path, size,
    modification time) and settings is reused: its `prepared.json` records from what, and is
    written last, so an interrupted preparation is redone. Preparing GENIA takes minutes
    (DocBin serialisation of the spans), so ablate.py's variants and parallel lanes share one."""
    import spacy
    from spacy.tokens import DocBin

    folder = out / "corpus" if folder is None else folder
    stamp = {
        "format": CORPUS_FORMAT, "lang": lang, "spans_key": spans_key,
        "train": _source_stamp(train, limit_train), "dev": _source_stamp(dev, limit_dev),
    }
    marker = folder / "prepared.json"
    if marker.is_file():
        saved = json.loads(marker.read_text(encoding="utf8"))
        if saved.get("stamp") == stamp and all(Path(p).is_file() for p in saved["info"]["paths"].values()):
            print(f"corpus: reusing {folder} (prepared from the same files)", flush=True)
            return saved["info"]
        marker.unlink()
    nlp = spacy.blank(lang)
    folder.mkdir(parents=True, exist_ok=True)
    info: Dict[str, Any] = {"source": {"train": str(train), "dev": str(dev)}, "paths": {}}
    for split, path, limit in (("train", train, limit_train), ("dev", dev, limit_dev)):
        docs = _read_docs(path, nlp.vocab, limit)
        stats = _span_stats(docs, spans_key)
        if not docs:
            raise ValueError(f"{path}: no docs to {split} on")
        if stats["n_docs_with_key"] == 0:
            raise ValueError(
                f"{path}: no doc has doc.spans[{spans_key!r}]; pass --spans-key with the key the "
                "converter wrote (python -m spacy_globalpointer convert ... --spans-key KEY)"
            )
        ner_docs, dropped = _as_ents(docs, spans_key)
        stats["ner_dropped_overlapping"] = dropped
        info[split] = stats
        info["paths"][split] = str(folder / f"{split}.spacy")
        info["paths"][f"ner_{split}"] = str(folder / f"ner_{split}.spacy")
        DocBin(docs=docs, store_user_data=True).to_disk(info["paths"][split])
        DocBin(docs=ner_docs, store_user_data=True).to_disk(info["paths"][f"ner_{split}"])
    if not info["train"]["n_spans"]:
        raise ValueError(f"{train}: the training docs have no spans under doc.spans[{spans_key!r}]")
    marker.write_text(json.dumps({"stamp": stamp, "info": info}, indent=2), encoding="utf8")
    return info


def resolve_max_span_length(value: str, longest: int, cap: int) -> int:
    """spancat's longest suggested n-gram: an integer, or "auto" = the longest train span, capped."""
    if value == "auto":
        return max(1, min(longest, cap))
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--suggester-max-size must be 'auto' or an integer >= 1, got {value!r}") from None
    if n < 1:
        raise ValueError(f"--suggester-max-size must be 'auto' or an integer >= 1, got {value!r}")
    return n
