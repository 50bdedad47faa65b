"""Helpers for the annotate tests: a generated corpus, reading shards back, an actor that dies.

Not a test module. It imports nothing from the tests package, so that Ray workers can import it
by its plain name (`annotate_helpers`) when the tests folder is on PYTHONPATH.
"""
import json
import os
import random
from pathlib import Path
from typing import Dict, List

N_DOCS = 2000  # the generated corpus of the annotate tests
SHARD_SIZE = 100
BATCH_SIZE = 32
WORDS = "Alice Bob Carol lives works in at New York City Paris Acme Corp the Bank of hired is big".split()
PHRASES = ["Alice lives in New York City", "The Bank of New York hired Carol", "Bob works at Acme Corp in Paris"]


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> List[str]:
    """Write `n_docs` JSONL records (texts of 0-20 words, with entity phrases) and return the texts."""
    rng = random.Random(seed)
    texts = []
    for i in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 12))]
        if rng.random() < 0.5:
            words.insert(rng.randint(0, len(words)), rng.choice(PHRASES))
        texts.append(" ".join(words))
    with path.open("w", encoding="utf8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"text": text, "meta": {"n": i}}) + "\n")
    return texts


def read_records(output_dir: Path) -> List[Dict]:
    """Every record in OUTPUT_DIR/shards/*.jsonl, in shard-name order (= input order)."""
    records = []
    for path in sorted((Path(output_dir) / "shards").glob("*.jsonl")):
        records.extend(json.loads(line) for line in path.read_text(encoding="utf8").splitlines())
    return records


def read_shard_bytes(output_dir: Path) -> Dict[str, bytes]:
    """Each output shard's bytes by file name."""
    return {path.name: path.read_bytes() for path in sorted((Path(output_dir) / "shards").glob("*.jsonl"))}


def make_dying_annotator(marker: str):
    """A ShardAnnotator subclass whose first call (across all actors) annotates half its batch and
    then kills its process; `marker` is the file that records that the death happened."""
    from spacy_globalpointer.annotate_ray import ShardAnnotator

    class DyingAnnotator(ShardAnnotator):
        def __call__(self, batch):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return super().__call__(batch)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            half = {key: values[: len(values) // 2] for key, values in batch.items()}
            super().__call__(half)  # mid-batch: some of the work done, nothing returned
            os._exit(1)

    return DyingAnnotator
