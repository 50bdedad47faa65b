import os
from pathlib import Path

import pytest
import spacy
from spacy.training import Example

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def shared_data_dir() -> Path:
    """Real datasets live beside the repo in ../shared/data (GP_DATA_DIR overrides)."""
    return Path(os.environ.get("GP_DATA_DIR", REPO.parent / "shared" / "data"))


# Nested Chinese examples: (text, [(start_char, end_char, label)]), end exclusive.
NESTED_ZH = [
    ("北京大学位于北京", [(0, 4, "ORG"), (0, 2, "LOC"), (6, 8, "LOC")]),
    ("上海市政府发布通知", [(0, 5, "ORG"), (0, 3, "LOC")]),
    ("张三在南京大学读书", [(0, 2, "PER"), (3, 7, "ORG"), (3, 5, "LOC")]),
    ("李四去了广州", [(0, 2, "PER"), (4, 6, "LOC")]),
    ("今天天气很好", []),
]


def make_examples(nlp, data=NESTED_ZH, key="sc"):
    examples = []
    for text, spans in data:
        reference = nlp.make_doc(text)
        reference.spans[key] = [reference.char_span(s, e, label=label) for s, e, label in spans]
        examples.append(Example(nlp.make_doc(text), reference))
    return examples


@pytest.fixture
def nested_examples():
    return lambda nlp, key="sc": make_examples(nlp, key=key)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    if has_gpu:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def annotate_model(tmp_path_factory):
    """A tiny trained English pipeline on disk, for the annotate tests."""
    from .tiny_pipeline import build_tiny

    nlp, _, _ = build_tiny("en", steps=30)
    path = tmp_path_factory.mktemp("annotate") / "model"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="session")
def annotate_corpus(tmp_path_factory):
    """(path, texts) of a generated JSONL corpus of annotate_helpers.N_DOCS records."""
    from .annotate_helpers import N_DOCS, write_corpus

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    return path, write_corpus(path, N_DOCS)


@pytest.fixture(scope="session")
def annotate_single_run(annotate_model, annotate_corpus, tmp_path_factory):
    """(output folder, summary) of the reference annotate run: one process, in this interpreter."""
    from spacy_globalpointer.annotate import annotate

    from .annotate_helpers import BATCH_SIZE, SHARD_SIZE

    output = tmp_path_factory.mktemp("single") / "out"
    summary = annotate(
        str(annotate_model), annotate_corpus[0], output, shard_size=SHARD_SIZE, batch_size=BATCH_SIZE,
        progress=False,
    )
    return output, summary


# configs/cpu.cfg trained on CLUENER: the F1 floor's run, shared with the tests that need a
# really trained pipeline (seed 0, STEPS updates of BATCH_SIZE docs, dropout 0.1).
CLUENER_STEPS = 300
CLUENER_BATCH_SIZE = 32


def cluener_examples(nlp, split):
    from spacy_globalpointer.convert import read_cluener

    path = shared_data_dir() / "cluener" / f"{split}.json"
    if not path.exists():
        pytest.skip(f"CLUENER data not found at {path}")
    docs, report = read_cluener(path, nlp)
    assert report.n_misaligned == 0
    return [Example(nlp.make_doc(doc.text), doc) for doc in docs]


@pytest.fixture(scope="session")
def cluener_cpu_training():
    """(nlp, optimizer, dev examples) after training configs/cpu.cfg on CLUENER train."""
    import random

    from thinc.api import fix_random_seed

    fix_random_seed(0)
    config = spacy.util.load_config(CONFIGS / "cpu.cfg")
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    train = cluener_examples(nlp, "train")
    dev = cluener_examples(nlp, "dev")
    optimizer = nlp.initialize(lambda: train)
    rng = random.Random(0)
    for _ in range(CLUENER_STEPS):
        nlp.update(rng.sample(train, CLUENER_BATCH_SIZE), sgd=optimizer, drop=0.1)
    return nlp, optimizer, dev


@pytest.fixture(scope="session")
def cluener_cpu_pipeline(cluener_cpu_training):
    return cluener_cpu_training[0]


@pytest.fixture(scope="session")
def cluener_dev_texts(cluener_cpu_training):
    return [eg.reference.text for eg in cluener_cpu_training[2]]


@pytest.fixture
def blank_zh():
    return spacy.blank("zh")
