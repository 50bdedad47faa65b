"""Unlabelled text for `spacy pretrain`, from converted DocBins."""
import json
from pathlib import Path
from typing import Dict, Iterator, Sequence

from spacy.tokens import DocBin
from spacy.vocab import Vocab

from .core import FormatError, PathLike, _existing_file


def write_raw_text(
    inputs: Sequence[PathLike], output: PathLike, *, exclude: Sequence[PathLike] = ()
) -> Dict[str, int]:
    """Unlabelled text for `spacy pretrain`: the texts of converted DocBins as JSONL records
    {"text": ...} (what spaCy's `spacy.JsonlCorpus.v1` reads), each distinct text once.

    Texts found in the `exclude` DocBins are left out, so that a dev or test set used to report
    scores is not pretrained on. Empty texts are skipped and counted. Returns the counts
    (read, written, duplicates, excluded, empty).
    """
    vocab = Vocab()

    def texts(path: PathLike) -> Iterator[str]:
        path = _existing_file(path)
        try:
            doc_bin = DocBin().from_disk(path)
        except Exception as error:  # srsly/msgpack errors have no common base class
            raise FormatError(f"{path}: not a .spacy DocBin ({error})") from error
        for doc in doc_bin.get_docs(vocab):
            yield doc.text

    excluded = {text for path in exclude for text in texts(path)}
    counts = {"read": 0, "written": 0, "duplicates": 0, "excluded": 0, "empty": 0}
    seen = set()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf8") as file_:
        for path in inputs:
            for text in texts(path):
                counts["read"] += 1
                if not text.strip():
                    counts["empty"] += 1
                elif text in excluded:
                    counts["excluded"] += 1
                elif text in seen:
                    counts["duplicates"] += 1
                else:
                    seen.add(text)
                    file_.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    counts["written"] += 1
    return counts
