"""Mixed-length benchmark: what long docs among short ones cost the whole pipeline.

Corpora of `--n-docs` docs built from the dev texts (repeated as needed), each written to a
DocBin with the gold spans that align with the config's tokenizer (the others are counted):

- `uniform`: the texts as they are;
- `mixed`: `--long-share` of them (1%) replaced by docs of `--long-chars` characters
  (consecutive texts joined, with their gold spans);
- `long_tail`: for each `--tail SHARE:MIN:MAX`, that share of the docs joined to MIN-MAX
  characters (default 9% to 300-800 and 1% to 1,500-2,000: 10% of docs over 300 characters,
  1% over 1,500).

For each checkout (`--baseline`, e.g. the commit this one branched from, and this one), in
fresh processes (one thread; PYTHONPATH set to the checkout measured), alternating within
each of `--rounds` rounds so that both see the same machine load, it measures:

- `infer`: words/s of `nlp.pipe(texts, batch_size=B)` (median of `--repeats` passes after a
  warm-up) for every corpus at each of `--batch-sizes`, and for `--sweep-corpora` at each of
  `--sweep` batch sizes; peak RSS and peak RSS above the loaded, warmed-up pipeline; at
  `--batch-sizes`, the global_pointer component's share of inference (one profiled pass);
- `stages`: one pass batch by batch at the first of `--batch-sizes`, recording how much the
  tokenizer and each component raised the peak RSS (the rises add up to the peak);
- `train`: words/s and peak RSS of one epoch of `nlp.update` (batches of
  `--train-batch-words` words) from a fresh pipeline of the checkout's config;
- `spacy_train`: `spacy train` with the checkout's config for `--spacy-train-steps` steps on
  a training corpus of the same kind (uniform or mixed, built from `--train`) with that
  corpus as dev, evaluated every `--spacy-train-eval` steps: wall time and the process's
  peak RSS (`os.wait4`);
- `score` (first round only): `nlp.evaluate` on the dev texts, and every predicted span with
  its probability, so that both checkouts are seen to give the same spans from the same
  weights.

The timed model is `--model`; with `--train-steps N` and no existing `--model`, one is first
trained for N steps with `spacy train` on `--train` with this checkout's config, keeping the
`--labels` most frequent labels. A checkout without `spacy-globalpointer.Tok2Vec.v1` loads a
copy of it whose config names spaCy's Tok2Vec.v2 instead (the same layer tree: the weights
load unchanged), and trains with its own copy of `--config`.

    python benchmarks/mixed_lengths.py --config configs/cpu.cfg \\
        --dev ../shared/data/cluener/dev.json --train ../shared/data/cluener/train.json \\
        --model /tmp/mixed/model --train-steps 600 --work /tmp/mixed \\
        --baseline /path/to/old/checkout --out results/mixed_lengths/cpu

writes `mixed_lengths.json` and `mixed_lengths.md` into `--out`.
"""
import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
CORPORA = ("uniform", "mixed", "long_tail")
TRAIN_CORPORA = ("uniform", "mixed")
KINDS = ("infer", "stages", "train", "spacy_train", "score")
KEY = "sc"
# A short doc used for warming up must be shorter than this (characters).
WARMUP_MAX_CHARS = 200
WARMUP_TEXTS = 100
CHUNKED_TOK2VEC = "spacy-globalpointer.Tok2Vec.v1"

CharSpans = List[Tuple[int, int, str]]
Record = Tuple[str, CharSpans]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu.cfg")
    parser.add_argument("--dev", type=Path, help="texts of the corpora (CLUENER JSON lines or JSONL)")
    parser.add_argument("--train", type=Path, help="training data for --train-steps and spacy_train (same format)")
    parser.add_argument("--format", choices=("cluener", "jsonl"), default="cluener")
    parser.add_argument("--model", type=Path, help="the trained pipeline to time")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train --model for this many steps first if it does not exist")
    parser.add_argument("--labels", type=int, default=9, help="labels of the trained head")
    parser.add_argument("--work", type=Path, help="folder for the corpora and logs (not the repo)")
    parser.add_argument("--out", type=Path, help="folder for mixed_lengths.json and .md")
    parser.add_argument("--baseline", type=Path, help="checkout of the code to compare against")
    parser.add_argument("--n-docs", type=int, default=2000)
    parser.add_argument("--long-share", type=float, default=0.01)
    parser.add_argument("--long-chars", type=int, default=2000)
    parser.add_argument("--tail", nargs="+", default=["0.09:300:800", "0.01:1500:2000"],
                        help="the long_tail corpus: SHARE:MIN:MAX, that share of docs joined to MIN-MAX characters")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 64],
                        help="nlp.pipe batch sizes of the main table (the first one also for stages)")
    parser.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64, 128, 256, 512, 1000],
                        help="nlp.pipe batch sizes of the sweep")
    parser.add_argument("--sweep-corpora", nargs="*", choices=CORPORA, default=["mixed", "long_tail"])
    parser.add_argument("--train-batch-words", type=int, default=1000)
    parser.add_argument("--spacy-train-steps", type=int, default=200)
    parser.add_argument("--spacy-train-eval", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_child", dest="child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None:
        missing = [name for name in ("dev", "model", "work", "out") if getattr(args, name) is None]
        if "spacy_train" in args.kinds and args.train is None:
            missing.append("train (for the spacy_train kind)")
        if missing:
            parser.error("required: " + ", ".join("--" + name for name in missing))
        args.tail = [parse_tail(item, parser) for item in args.tail]
    return args


def parse_tail(item: str, parser: argparse.ArgumentParser) -> Tuple[float, int, int]:
    try:
        share, low, high = item.split(":")
        parsed = (float(share), int(low), int(high))
    except ValueError:
        parser.error(f"--tail {item!r}: expected SHARE:MIN:MAX, e.g. 0.09:300:800")
    if not (0 <= parsed[0] <= 1 and 0 < parsed[1] <= parsed[2]):
        parser.error(f"--tail {item!r}: SHARE in [0, 1] and 0 < MIN <= MAX")
    return parsed


# ---------------------------------------------------------------- corpora


def config_lang(config: Path) -> str:
    from spacy.util import load_config

    return load_config(config)["nlp"]["lang"]


def read_records(path: Path, fmt: str, lang: str) -> List[Record]:
    """(text, [(start_char, end_char, label)]) of every doc in a CLUENER or JSONL file."""
    import spacy

    from spacy_globalpointer.convert import read_cluener, read_jsonl

    reader = read_cluener if fmt == "cluener" else read_jsonl
    docs, _ = reader(path, spacy.blank(lang), spans_key=KEY)
    return [(doc.text, [(s.start_char, s.end_char, s.label_) for s in doc.spans[KEY]]) for doc in docs]


def joined_record(records: List[Record], first: int, chars: int, separator: str) -> Record:
    """Consecutive records from `first` on, joined and cut to `chars` characters, with the
    gold spans that fit."""
    text, spans, i = "", [], first
    while len(text) < chars:
        piece, piece_spans = records[i % len(records)]
        if text:
            text += separator
        spans += [(s + len(text), e + len(text), label) for s, e, label in piece_spans]
        text += piece
        i += 1
    return text[:chars], [span for span in spans if span[1] <= chars]


def build_corpora(
    records: List[Record], n_docs: int, long_share: float, long_chars: int,
    tail: Sequence[Tuple[float, int, int]], seed: int, separator: str = "",
) -> Dict[str, List[Record]]:
    """The uniform corpus (records repeated to n_docs), the mixed one (a seeded `long_share`
    of the docs `long_chars` long) and the long-tail one (each tail share MIN-MAX long)."""
    short = [records[i % len(records)] for i in range(n_docs)]
    rng = random.Random(seed)
    mixed = list(short)
    for k, position in enumerate(sorted(rng.sample(range(n_docs), round(n_docs * long_share)))):
        mixed[position] = joined_record(records, 97 * k, long_chars, separator)
    long_tail = list(short)
    free = list(range(n_docs))
    rng.shuffle(free)
    k = 0
    for share, low, high in tail:
        for position in [free.pop() for _ in range(round(n_docs * share))]:
            long_tail[position] = joined_record(records, 89 * k, rng.randint(low, high), separator)
            k += 1
    return {"uniform": short, "mixed": mixed, "long_tail": long_tail}


def keep_labels(records: List[Record], labels: Sequence[str]) -> List[Record]:
    wanted = set(labels)
    return [(text, [s for s in spans if s[2] in wanted]) for text, spans in records]


def write_corpus(records: List[Record], path: Path, lang: str) -> Dict[str, int]:
    """A DocBin of the records tokenized by blank(lang); gold spans that do not align with
    the tokens are left out and counted."""
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank(lang)
    docs, left_out = [], 0
    for text, spans in records:
        doc = nlp.make_doc(text)
        aligned = [doc.char_span(s, e, label=label) for s, e, label in spans]
        left_out += sum(span is None for span in aligned)
        doc.spans[KEY] = [span for span in aligned if span is not None]
        docs.append(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=False).to_disk(path)
    return {"spans_left_out": left_out}


def corpus_stats(records: List[Record]) -> Dict[str, Any]:
    lengths = [len(text) for text, _ in records]
    return {
        "docs": len(records), "chars": sum(lengths), "longest": max(lengths),
        "over_300": sum(n > 300 for n in lengths), "over_1500": sum(n > 1500 for n in lengths),
        "gold_spans": sum(len(s) for _, s in records),
    }


# ---------------------------------------------------------------- in the child process


def _rss_mb() -> float:
    with open("/proc/self/statm") as file_:
        return int(file_.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    # ru_maxrss and /proc/self/statm count resident pages a little differently
    # (they can disagree by a few pages), so the peak is never reported below
    # the resident size measured now.
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, _rss_mb())


def _read_docs(path: str, vocab) -> list:
    from spacy.tokens import DocBin

    return list(DocBin().from_disk(path).get_docs(vocab))


def _package_info() -> Dict[str, Any]:
    import spacy_globalpointer

    return {"package": os.path.dirname(spacy_globalpointer.__file__)}


def _load_warm(spec: Dict[str, Any]):
    """The pipeline, the corpus's texts, and the RSS after a warm-up on short texts."""
    import spacy

    nlp = spacy.load(spec["model"])
    texts = [doc.text for doc in _read_docs(spec["corpus"], nlp.vocab)]
    warmup = [t for t in texts if len(t) < WARMUP_MAX_CHARS][:WARMUP_TEXTS]
    for _ in nlp.pipe(warmup, batch_size=spec["batch_size"]):
        pass
    return nlp, texts, _rss_mb()


def child_infer(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time nlp.pipe over the corpus; peak RSS above the loaded, warmed-up pipeline."""
    nlp, texts, baseline = _load_warm(spec)
    walls, cpus = [], []
    words = spans = 0
    for _ in range(spec["repeats"]):
        words = spans = 0
        start, start_cpu = time.perf_counter(), time.process_time()
        for doc in nlp.pipe(texts, batch_size=spec["batch_size"]):
            words += len(doc)
            spans += len(doc.spans[KEY])
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    peak = _peak_mb()
    result = {
        "words": words, "docs": len(texts), "spans": spans, "wall_s": walls, "cpu_s": cpus,
        "words_per_s": words / statistics.median(walls),
        "words_per_cpu_s": words / statistics.median(cpus),
        "baseline_mb": baseline, "peak_mb": peak, "above_baseline_mb": peak - baseline,
        **_package_info(),
    }
    if spec["profile"]:
        if str(HERE) not in sys.path:  # run as a script, this folder is there already
            sys.path.insert(0, str(HERE))
        from compare_run import _timed_components

        profile = _timed_components(nlp, texts, spec["batch_size"])
        total = sum(part["total"] for part in profile.values())
        component = profile.get("global_pointer", {})
        result.update({
            "profile": profile,
            "share": component.get("total", 0.0) / total if total else None,
            "set_annotations_share": component.get("set_annotations", 0.0) / total if total else None,
        })
    return result


def child_stages(spec: Dict[str, Any]) -> Dict[str, Any]:
    """How much each stage of inference raises the peak RSS, batch by batch."""
    from spacy.util import minibatch

    nlp, texts, baseline = _load_warm(spec)
    # The high-water mark may already sit above the current RSS (the warm-up's transients).
    rises = {"warm-up": _peak_mb() - baseline, **{name: 0.0 for name in ["tokenizer"] + nlp.pipe_names}}
    batch_tokens = []
    for batch in minibatch(texts, spec["batch_size"]):
        before = _peak_mb()
        docs = [nlp.make_doc(text) for text in batch]
        rises["tokenizer"] += _peak_mb() - before
        batch_tokens.append(sum(len(doc) for doc in docs))
        for name, proc in nlp.pipeline:
            before = _peak_mb()
            proc.set_annotations(docs, proc.predict(docs))
            rises[name] += _peak_mb() - before
        del docs
    return {
        "words": sum(batch_tokens), "largest_batch_tokens": max(batch_tokens),
        "baseline_mb": baseline, "peak_mb": _peak_mb(), "above_baseline_mb": _peak_mb() - baseline,
        "rises_mb": rises, **_package_info(),
    }


def child_train(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One epoch of nlp.update over the corpus from a fresh pipeline of the config."""
    import spacy
    from spacy.training import Example
    from spacy.training.batchers import minibatch_by_words
    from spacy.util import load_config, load_model_from_config
    from thinc.api import fix_random_seed

    config = load_config(spec["config"])
    fix_random_seed(spec["seed"])
    nlp = load_model_from_config(config, auto_fill=True)
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in _read_docs(spec["corpus"], nlp.vocab)]
    optimizer = nlp.initialize(lambda: examples)
    random.Random(spec["seed"]).shuffle(examples)
    dropout = config["training"]["dropout"]
    batches = list(minibatch_by_words(examples, spec["batch_words"], tolerance=0.2, discard_oversize=False))
    warmup, timed = batches[:3], batches[3:]
    for batch in warmup:
        nlp.update(batch, drop=dropout, sgd=optimizer)
    baseline = _rss_mb()
    losses: Dict[str, float] = {}
    start, start_cpu = time.perf_counter(), time.process_time()
    for batch in timed:
        nlp.update(batch, drop=dropout, sgd=optimizer, losses=losses)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    words = sum(len(eg) for batch in timed for eg in batch)
    return {
        "words": words, "batches": len(timed), "wall_s": wall, "cpu_s": cpu,
        "words_per_s": words / wall, "words_per_cpu_s": words / cpu,
        "baseline_mb": baseline, "peak_mb": _peak_mb(), "above_baseline_mb": _peak_mb() - baseline,
        "loss": losses.get("global_pointer"), **_package_info(),
    }


def child_score(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Scores on the gold corpus; every predicted span with its score goes to spec["predictions"]
    (one JSON list per doc), to be compared between checkouts."""
    import spacy
    from spacy.training import Example

    nlp = spacy.load(spec["model"])
    gold = _read_docs(spec["corpus"], nlp.vocab)
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in gold]
    scores = nlp.evaluate(examples, batch_size=spec["batch_size"])
    n_spans = 0
    with open(spec["predictions"], "w", encoding="utf8") as file_:
        for doc in nlp.pipe([doc.text for doc in gold], batch_size=spec["batch_size"]):
            group = doc.spans[KEY]
            spans = [[span.start, span.end, span.label_, float(score)] for span, score in zip(group, group.attrs["scores"])]
            file_.write(json.dumps(spans) + "\n")
            n_spans += len(spans)
    return {
        "f": scores[f"spans_{KEY}_f"], "p": scores[f"spans_{KEY}_p"], "r": scores[f"spans_{KEY}_r"],
        "spans": n_spans, "peak_mb": _peak_mb(), "baseline_mb": 0.0, "above_baseline_mb": 0.0, **_package_info(),
    }


def compare_predictions(paths: Dict[str, Path]) -> Dict[str, Any]:
    """Whether two checkouts predicted the same spans, and how far apart their scores are."""
    old, new = ([json.loads(line) for line in paths[code].read_text(encoding="utf8").splitlines()] for code in ("old", "new"))
    same = len(old) == len(new) and all(
        [span[:3] for span in a] == [span[:3] for span in b] for a, b in zip(old, new))
    differences = [abs(x[3] - y[3]) for a, b in zip(old, new) for x, y in zip(a, b) if x[:3] == y[:3]]
    return {"same_spans": same, "docs": len(new), "max_score_difference": max(differences, default=0.0)}


CHILDREN = {"infer": child_infer, "stages": child_stages, "train": child_train, "score": child_score}


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    import torch

    torch.set_num_threads(1)
    print(json.dumps(CHILDREN[spec["kind"]](spec)))


# ---------------------------------------------------------------- in the parent


def child_env(code: Path) -> Dict[str, str]:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = "1"
    env["PYTHONPATH"] = str(code)
    return env


def _wait(command: List[str], code: Path, log: Path, what: str) -> Tuple[str, float, float]:
    """Run `command` with the checkout's environment: (stdout, wall s, peak RSS MB by wait4).

    It runs in the log's folder: `python -m` and `python -c` put the working directory first on
    sys.path, where a checkout's package would shadow the one PYTHONPATH names."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf8") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=child_env(code), text=True,
                                cwd=log.parent)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text(encoding="utf8").strip().splitlines()[-3:]
        raise RuntimeError(f"{what} with {code} failed: {tail}")
    return out, time.perf_counter() - start, usage.ru_maxrss / 2**10


def run_child(spec: Dict[str, Any], code: Path, log: Path) -> Dict[str, Any]:
    """One measurement in a fresh interpreter importing the package from `code`."""
    command = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    load_before = os.getloadavg()[0]
    out, _, peak = _wait(command, code, log, f"measurement {spec['kind']} on {spec['corpus']}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wait4_peak_mb"] = peak
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if Path(result["package"]).resolve() != (code / "spacy_globalpointer").resolve():
        raise RuntimeError(f"measured {result['package']}, expected the package in {code}")
    return result


def run_spacy_train(spec: Dict[str, Any], code: Path, work: Path, log: Path) -> Dict[str, Any]:
    """`spacy train` with the checkout's config on a training corpus and its dev corpus."""
    output = work / "spacy_train_output"
    shutil.rmtree(output, ignore_errors=True)
    # spaCy's CLI, after saying which package it imported (checked below).
    command = [
        sys.executable, "-c", SPACY_TRAIN, "train", spec["config"], "--output", str(output),
        "--paths.train", spec["train_corpus"], "--paths.dev", spec["corpus"],
        "--training.max_steps", str(spec["steps"]), "--training.eval_frequency", str(spec["eval_every"]),
        "--system.seed", str(spec["seed"]),
    ]
    load_before = os.getloadavg()[0]
    out, wall, peak = _wait(command, code, log, f"spacy train on {spec['train_corpus']}")
    shutil.rmtree(output, ignore_errors=True)
    package = out.strip().splitlines()[0]
    if Path(package).resolve() != (code / "spacy_globalpointer").resolve():
        raise RuntimeError(f"spacy train used {package}, expected the package in {code}")
    return {"wall_s": wall, "peak_mb": peak, "baseline_mb": 0.0, "above_baseline_mb": 0.0,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


SPACY_TRAIN = (
    "import os, spacy_globalpointer; print(os.path.dirname(spacy_globalpointer.__file__), flush=True); "
    "from spacy.cli import setup_cli; setup_cli()"
)


def has_chunked_tok2vec(code: Path) -> bool:
    setup = code / "setup.cfg"
    return setup.exists() and CHUNKED_TOK2VEC in setup.read_text(encoding="utf8")


def config_for(config: Path, code: Path) -> Path:
    """The checkout's own copy of a config of this repository (or the path as given)."""
    try:
        return code / config.resolve().relative_to(REPO)
    except ValueError:
        return config


# Settings of 0.2.0 whose default is what a checkout from before them does anyway.
NEW_DEFAULT_SETTINGS = ("boundary_smoothing = 0.0", "boundary_distance = 1", "span_grid = null")


def model_for(model: Path, code: Path, work: Path) -> Path:
    """The model as `code` can load it: where the checkout has no chunked tok2vec, a copy whose
    config names spaCy's Tok2Vec.v2 (same layer tree, so the weights load unchanged) and leaves
    out the settings of 0.2.0 that are at their defaults."""
    config = (model / "config.cfg").read_text(encoding="utf8")
    if has_chunked_tok2vec(code) or CHUNKED_TOK2VEC not in config:
        return model
    copy = work / f"{model.name}_tok2vec_v2"
    if not copy.exists():
        shutil.copytree(model, copy)
        lines = [line for line in config.splitlines()
                 if not line.startswith("max_predict_tokens") and line.strip() not in NEW_DEFAULT_SETTINGS]
        text = "\n".join(lines).replace(f'"{CHUNKED_TOK2VEC}"', '"spacy.Tok2Vec.v2"') + "\n"
        (copy / "config.cfg").write_text(text, encoding="utf8")
    return copy


def train_model(args, labels: List[str], lang: str) -> Dict[str, Any]:
    """Train the timed model for --train-steps with `spacy train` (the code under test)."""
    records = keep_labels(read_records(args.train, args.format, lang), labels)
    dev = keep_labels(read_records(args.dev, args.format, lang), labels)[:500]
    write_corpus(records, args.work / "model_train.spacy", lang)
    write_corpus(dev, args.work / "model_dev.spacy", lang)
    output = args.work / "training"
    command = [
        sys.executable, "-m", "spacy", "train", str(args.config), "--output", str(output),
        "--paths.train", str(args.work / "model_train.spacy"), "--paths.dev", str(args.work / "model_dev.spacy"),
        "--training.max_steps", str(args.train_steps), "--training.eval_frequency", str(args.train_steps),
        "--system.seed", str(args.seed),
    ]
    start = time.perf_counter()
    with open(args.work / "train_model.log", "w", encoding="utf8") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(REPO), check=True, cwd=args.work)
    (output / "model-last").rename(args.model)
    return {"steps": args.train_steps, "seconds": time.perf_counter() - start, "trained_here": True}


def jobs(args) -> List[Tuple[str, str, int]]:
    """(kind, corpus, batch size) of every measurement of a round, in order."""
    out: List[Tuple[str, str, int]] = []
    if "infer" in args.kinds:
        out += [("infer", corpus, size) for corpus in args.corpora for size in args.batch_sizes]
        out += [("infer", corpus, size) for corpus in args.sweep_corpora for size in args.sweep
                if ("infer", corpus, size) not in out]
    if "stages" in args.kinds:
        out += [("stages", corpus, args.batch_sizes[0]) for corpus in args.corpora]
    if "train" in args.kinds:
        out += [("train", corpus, 0) for corpus in args.corpora]
    if "spacy_train" in args.kinds:
        out += [("spacy_train", corpus, 0) for corpus in TRAIN_CORPORA]
    return out


FIELDS = ("words_per_s", "words_per_cpu_s", "peak_mb", "above_baseline_mb", "baseline_mb", "wait4_peak_mb",
          "share", "set_annotations_share", "spans", "words", "largest_batch_tokens", "wall_s")


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over rounds: summary[kind][code][corpus][str(batch size)]."""
    cells: Dict[Tuple[str, str, str, int], List[Dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["kind"], run["code"], run["corpus"], run["batch_size"]), []).append(run["result"])
    out: Dict[str, Any] = {}
    for (kind, code, corpus, size), results in sorted(cells.items()):
        cell = {
            field: statistics.median(r[field] for r in results)
            for field in FIELDS if all(isinstance(r.get(field), (int, float)) for r in results)
        }
        if "rises_mb" in results[0]:
            cell["rises_mb"] = {
                stage: statistics.median(r["rises_mb"][stage] for r in results) for stage in results[0]["rises_mb"]
            }
        out.setdefault(kind, {}).setdefault(code, {}).setdefault(corpus, {})[str(size)] = cell
    return out


def _cell(summary, kind, code, corpus, size=0) -> Dict[str, Any]:
    return summary.get(kind, {}).get(code, {}).get(corpus, {}).get(str(size), {})


def targets(summary: Dict[str, Any], codes: List[str], scores: Dict[str, Any], large: int = 1000,
            small: int = 64) -> Dict[str, Any]:
    """The issue's checks, for every code measured: each with its figures and whether it is met."""
    out: Dict[str, Any] = {}
    for code in codes:
        checks: Dict[str, Any] = {}
        uniform, mixed = _cell(summary, "infer", code, "uniform", large), _cell(summary, "infer", code, "mixed", large)
        if uniform and mixed:
            limit = 1.2 * uniform["above_baseline_mb"] + 50.0
            ratio = mixed["words_per_s"] / uniform["words_per_s"]
            checks["mixed_speed"] = {"mixed_over_uniform_words_per_s": ratio, "met": ratio >= 0.90,
                                     "mixed_over_uniform_words_per_cpu_s": mixed["words_per_cpu_s"] / uniform["words_per_cpu_s"]}
            checks["mixed_memory"] = {"above_baseline_mb": mixed["above_baseline_mb"], "limit_mb": limit,
                                      "ratio": mixed["above_baseline_mb"] / max(uniform["above_baseline_mb"], 1e-9),
                                      "met": mixed["above_baseline_mb"] <= limit}
        at_large = _cell(summary, "infer", code, "long_tail", large)
        at_small = _cell(summary, "infer", code, "long_tail", small)
        if at_large and at_small:
            checks["long_tail_sweep"] = {
                "words_per_s_ratio": at_large["words_per_s"] / at_small["words_per_s"],
                "peak_ratio": at_large["peak_mb"] / at_small["peak_mb"],
                "met": at_large["words_per_s"] >= at_small["words_per_s"] and at_large["peak_mb"] <= 2 * at_small["peak_mb"],
            }
        train_uniform = _cell(summary, "spacy_train", code, "uniform")
        train_mixed = _cell(summary, "spacy_train", code, "mixed")
        if train_uniform and train_mixed:
            ratio = train_mixed["peak_mb"] / train_uniform["peak_mb"]
            checks["spacy_train_memory"] = {"peak_ratio": ratio, "met": ratio <= 1.5}
        out[code] = checks
    if "old" in codes and "new" in codes:
        new_over_old: Dict[str, Any] = {}
        for corpus in CORPORA:
            for size in sorted({int(s) for s in summary.get("infer", {}).get("new", {}).get(corpus, {})}):
                new, old = _cell(summary, "infer", "new", corpus, size), _cell(summary, "infer", "old", corpus, size)
                if new and old:
                    new_over_old[f"{corpus}@{size}"] = {
                        "words_per_s": new["words_per_s"] / old["words_per_s"],
                        "words_per_cpu_s": new["words_per_cpu_s"] / old["words_per_cpu_s"],
                        "peak_mb": new["peak_mb"] / old["peak_mb"],
                    }
        out["new_over_old"] = new_over_old
        uniform = new_over_old.get(f"uniform@{large}")
        if uniform:
            out["new"]["uniform_no_slowdown"] = {"words_per_s": uniform["words_per_s"],
                                                 "met": uniform["words_per_s"] >= 0.95}
        if "old" in scores and "new" in scores:
            out["new"]["same_spans"] = {
                "f_old": scores["old"]["f"], "f_new": scores["new"]["f"], **scores["comparison"],
                "met": scores["comparison"]["same_spans"] and scores["old"]["f"] == scores["new"]["f"],
            }
    return out


def _fmt(value: Any, spec: str = ".0f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def _met(check: Optional[Dict[str, Any]]) -> str:
    return "-" if not check else ("met" if check["met"] else "**missed**")


def write_markdown(path: Path, report: Dict[str, Any]) -> None:
    summary, checks, codes = report["summary"], report["targets"], list(report["codes"])
    large, small = report["batch_sizes"][0], report["batch_sizes"][-1]
    lines = [
        "# Mixed-length benchmark: the whole pipeline", "",
        f"Command: `{report['command']}`", "",
        f"Config: `{report['config']}`. Corpora (characters): {json.dumps(report['corpora'])}", "",
        f"Model: {report['model']['path']} ({json.dumps(report['model']['info'])}). "
        f"Codes: {json.dumps(report['commits'])}. Rounds: {report['rounds']}, checkouts alternating "
        f"within each. Load average (1 min) at start {report['load_start']}, at end {report['load_end']}.",
        "",
        "Medians over rounds, each measurement in a fresh process with one thread. Inference: "
        "`nlp.pipe(texts, batch_size)`; 'above loaded' is peak RSS minus RSS after loading and a warm-up; "
        "share is global_pointer's predict + set_annotations of all components (one profiled pass).",
        "",
        "| code | corpus | batch size | words/s | words/CPU-s | peak MB | above loaded MB | component share "
        "(set_annotations) | spans/doc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus in report["corpora"]:
        for size in report["batch_sizes"]:
            for code in codes:
                cell = _cell(summary, "infer", code, corpus, size)
                if not cell:
                    continue
                spans_per_doc = cell["spans"] / report["corpora"][corpus]["docs"] if "spans" in cell else None
                lines.append(
                    f"| {code} | {corpus} | {size} | {_fmt(cell.get('words_per_s'))} | {_fmt(cell.get('words_per_cpu_s'))} "
                    f"| {_fmt(cell.get('peak_mb'))} | {_fmt(cell.get('above_baseline_mb'))} "
                    f"| {_fmt(cell.get('share'), '.1f', 100)}% ({_fmt(cell.get('set_annotations_share'), '.1f', 100)}%) "
                    f"| {_fmt(spans_per_doc, '.2f')} |"
                )
    sweep = report["sweep"]
    if sweep:
        lines += ["", "Batch-size sweep: words/s and peak RSS (MB) of `nlp.pipe`.", "",
                  "| corpus | batch size | " + " | ".join(f"{c} words/s | {c} peak MB" for c in codes) + " |",
                  "|---|---:|" + "---:|---:|" * len(codes)]
        for corpus in report["sweep_corpora"]:
            for size in sweep:
                cells = [_cell(summary, "infer", code, corpus, size) for code in codes]
                if any(cells):
                    lines.append(f"| {corpus} | {size} | " + " | ".join(
                        f"{_fmt(c.get('words_per_s'))} | {_fmt(c.get('peak_mb'))}" for c in cells) + " |")
    if summary.get("train") or summary.get("spacy_train"):
        lines += ["", f"Training. `nlp.update`: one epoch in batches of {report['train_batch_words']} words from a "
                  f"fresh pipeline. `spacy train`: {report['spacy_train']['steps']} steps, evaluated every "
                  f"{report['spacy_train']['eval_every']} on the corpus of the same kind (the config's "
                  "nlp.batch_size), whole-process peak RSS.", "",
                  "| code | corpus | nlp.update words/s | nlp.update peak MB | spacy train s | spacy train peak MB |",
                  "|---|---|---:|---:|---:|---:|"]
        for corpus in report["corpora"]:
            for code in codes:
                update, full = _cell(summary, "train", code, corpus), _cell(summary, "spacy_train", code, corpus)
                if update or full:
                    lines.append(f"| {code} | {corpus} | {_fmt(update.get('words_per_s'))} | {_fmt(update.get('peak_mb'))} "
                                 f"| {_fmt(full.get('wall_s'))} | {_fmt(full.get('peak_mb'))} |")
    stages = summary.get("stages", {})
    if stages:
        lines += [
            "", f"Peak RSS above the loaded pipeline by the stage that raised it (batch size {large}, one pass "
            "batch by batch, fresh process); the rises add up to the total.", "",
            "| code | corpus | tokens in the largest batch | total MB | MB raised by each stage |",
            "|---|---|---:|---:|---|",
        ]
        for corpus in report["corpora"]:
            for code in codes:
                cell = _cell(summary, "stages", code, corpus, large)
                if cell:
                    rises = ", ".join(f"{stage} {value:.0f}" for stage, value in cell["rises_mb"].items())
                    lines.append(f"| {code} | {corpus} | {cell['largest_batch_tokens']:.0f} "
                                 f"| {cell['above_baseline_mb']:.0f} | {rises} |")
    if report["scores"]:
        lines += ["", "Scores on the dev texts (`nlp.evaluate`, the same weights for every checkout).",
                  "", "| code | P | R | F | spans predicted |", "|---|---:|---:|---:|---:|"]
        for code in codes:
            score = report["scores"].get(code)
            if score:
                lines.append(f"| {code} | {score['p'] * 100:.2f} | {score['r'] * 100:.2f} | {score['f'] * 100:.2f} "
                             f"| {score['spans']} |")
        comparison = report["scores"].get("comparison")
        if comparison:
            lines += ["", f"Same spans in all {comparison['docs']} docs: {'yes' if comparison['same_spans'] else 'no'}; "
                      f"largest difference of a span's probability: {comparison['max_score_difference']:.2e}."]
    lines += ["", "Targets:", "", "| code | target | figure | |", "|---|---|---|---|"]
    for code in codes:
        check = checks.get(code, {})
        rows = [
            ("mixed_speed", f"mixed / uniform words/s at {large} >= 0.90",
             lambda c: f"{c['mixed_over_uniform_words_per_s']:.2f} (per CPU-s {c['mixed_over_uniform_words_per_cpu_s']:.2f})"),
            ("mixed_memory", f"mixed above-loaded RSS at {large} <= 1.2 x uniform + 50 MB",
             lambda c: f"{c['above_baseline_mb']:.0f} MB, limit {c['limit_mb']:.0f} MB ({c['ratio']:.2f}x uniform)"),
            ("long_tail_sweep", f"long_tail: words/s at {large} >= at {small}, peak RSS at {large} <= 2x at {small}",
             lambda c: f"words/s {c['words_per_s_ratio']:.2f}x, peak {c['peak_ratio']:.2f}x"),
            ("spacy_train_memory", "spacy train peak RSS mixed <= 1.5x uniform", lambda c: f"{c['peak_ratio']:.2f}x"),
            ("uniform_no_slowdown", f"uniform words/s at {large}, new / old >= 0.95", lambda c: f"{c['words_per_s']:.3f}"),
            ("same_spans", "same F1 and spans from the same weights",
             lambda c: f"F {c['f_old'] * 100:.2f} / {c['f_new'] * 100:.2f}, probabilities within "
                       f"{c['max_score_difference']:.1e}"),
        ]
        for name, target, describe in rows:
            if name in check:
                lines.append(f"| {code} | {target} | {describe(check[name])} | {_met(check[name])} |")
    ratios = checks.get("new_over_old", {})
    if ratios:
        lines += ["", "New / old: " + "; ".join(
            f"{key} words/s {value['words_per_s']:.2f}x, peak {value['peak_mb']:.2f}x" for key, value in ratios.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf8")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return {}
    # The training runs work in --work (spaCy writes there), so every path must stand on its own.
    for name in ("config", "dev", "train", "model", "work", "out"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    lang = config_lang(args.config)
    separator = "" if lang in ("zh", "ja") else " "
    records = read_records(args.dev, args.format, lang)
    train_records = read_records(args.train, args.format, lang) if args.train else None
    label_counts = Counter(label for _, spans in (train_records or records) for _, _, label in spans)
    labels = sorted(label for label, _ in label_counts.most_common(args.labels))
    model_info: Dict[str, Any] = {"trained_here": False}
    if not args.model.exists():
        if not args.train_steps or args.train is None:
            raise SystemExit(f"--model {args.model} does not exist; give --train and --train-steps to train it")
        model_info = train_model(args, labels, lang)
    performance = json.loads((args.model / "meta.json").read_text(encoding="utf8")).get("performance", {})
    model_info.update({f"dev_{k}": performance.get(f"spans_{KEY}_{k}") for k in ("p", "r", "f")})
    corpora = build_corpora(keep_labels(records, labels), args.n_docs, args.long_share, args.long_chars,
                            args.tail, args.seed, separator)
    stats = {}
    for name in args.corpora:
        stats[name] = {**corpus_stats(corpora[name]), **write_corpus(corpora[name], args.work / f"{name}.spacy", lang)}
    if "spacy_train" in args.kinds:
        train_corpora = build_corpora(keep_labels(train_records, labels), args.n_docs, args.long_share,
                                      args.long_chars, args.tail, args.seed + 1, separator)
        for name in TRAIN_CORPORA:
            write_corpus(train_corpora[name], args.work / f"{name}_train.spacy", lang)
    if "score" in args.kinds:
        write_corpus(keep_labels(records, labels), args.work / "dev.spacy", lang)
    codes = {"new": REPO} if args.baseline is None else {"old": args.baseline.resolve(), "new": REPO}
    models = {name: model_for(args.model, code, args.work) for name, code in codes.items()}
    scores: Dict[str, Any] = {}
    runs = []
    for round_ in range(args.rounds):
        # Alternate which checkout goes first, so that neither always runs on a warmer machine.
        order = list(codes) if round_ % 2 == 0 else list(codes)[::-1]
        for kind, corpus, size in jobs(args):
            for code in order:
                spec = {
                    "kind": kind, "corpus": str(args.work / f"{corpus}.spacy"), "model": str(models[code]),
                    "config": str(config_for(args.config, codes[code])), "batch_size": size,
                    "repeats": args.repeats, "batch_words": args.train_batch_words, "seed": args.seed,
                    "profile": size in args.batch_sizes, "steps": args.spacy_train_steps,
                    "eval_every": args.spacy_train_eval, "train_corpus": str(args.work / f"{corpus}_train.spacy"),
                }
                log = args.work / f"{kind}_{corpus}_{size}_{code}_{round_}.log"
                if kind == "spacy_train":
                    result = run_spacy_train(spec, codes[code], args.work, log)
                else:
                    result = run_child(spec, codes[code], log)
                runs.append({"round": round_, "kind": kind, "corpus": corpus, "batch_size": size, "code": code,
                             "result": result})
                speed = f"{result['words_per_s']:.0f} words/s, " if "words_per_s" in result else ""
                print(f"round {round_} {kind:11} {corpus:9} {size:5} {code}: {speed}peak {result['peak_mb']:.0f} MB "
                      f"({result['above_baseline_mb']:.0f} above loaded), load {result['load_average']}", flush=True)
        if round_ == 0 and "score" in args.kinds:
            predictions = {code: args.work / f"predictions_{code}.jsonl" for code in codes}
            for code in order:
                spec = {"kind": "score", "corpus": str(args.work / "dev.spacy"), "model": str(models[code]),
                        "batch_size": args.batch_sizes[0], "predictions": str(predictions[code])}
                scores[code] = run_child(spec, codes[code], args.work / f"score_{code}.log")
                print(f"score {code}: F {scores[code]['f'] * 100:.2f}, {scores[code]['spans']} spans", flush=True)
            if len(codes) == 2:
                scores["comparison"] = compare_predictions(predictions)
    summary = summarize(runs)
    command = "python benchmarks/mixed_lengths.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command, "config": str(args.config), "corpora": stats, "labels": labels,
        "model": {"path": str(args.model), "info": model_info},
        "codes": {name: str(path) for name, path in codes.items()},
        "commits": {name: _git_commit(path) for name, path in codes.items()},
        "rounds": args.rounds, "batch_sizes": args.batch_sizes, "sweep": args.sweep,
        "sweep_corpora": args.sweep_corpora, "repeats": args.repeats, "train_batch_words": args.train_batch_words,
        "spacy_train": {"steps": args.spacy_train_steps, "eval_every": args.spacy_train_eval},
        "load_start": round(load_start, 2), "load_end": round(os.getloadavg()[0], 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "summary": summary, "scores": scores,
        "targets": targets(summary, list(codes), scores, args.batch_sizes[0], args.batch_sizes[-1]),
        "runs": runs,
    }
    (args.out / "mixed_lengths.json").write_text(json.dumps(report, indent=2), encoding="utf8")
    write_markdown(args.out / "mixed_lengths.md", report)
    print((args.out / "mixed_lengths.md").read_text(encoding="utf8"))
    return report


def _git_commit(path: Path) -> Optional[str]:
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode:
        return None
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "spacy_globalpointer", "configs"],
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


if __name__ == "__main__":
    main()
