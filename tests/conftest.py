import os
from pathlib import Path

# The suite runs in parallel workers (pytest-xdist, `-n auto` in setup.cfg): each worker and
# the processes its tests start get an even share of the cores, so that torch's thread pools
# do not oversubscribe them. Set before torch is imported anywhere in the worker.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

import pytest  # noqa: E402  (after the thread settings)
import spacy
from spacy.training import Example

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module, with benchmarks/ on sys.path while it loads (the scripts
    import their siblings, e.g. ablate.py imports compare.py, as the scripts' folder allows)."""
    import importlib.util
    import sys

    folder = REPO / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


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


@pytest.fixture
def blank_zh():
    return spacy.blank("zh")
