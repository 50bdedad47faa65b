"""Mixed-length benchmark: what a few long docs in a corpus of short ones cost.

Two corpora of `--n-docs` short docs (the dev texts, repeated as needed): `uniform`, and
`mixed`, where `--long-share` of them (1%) are replaced by docs of `--long-chars`
characters (consecutive dev texts joined, with their gold spans). For each, and for each
checkout of the package (`--baseline`, e.g. the commit this one branched from, and this
one), it measures:

- inference: words/s of `nlp.pipe(texts, batch_size=--batch-size)` (median of
  `--repeats` passes after a warm-up), the global_pointer component's share of inference
  (predict + set_annotations, of the tokenizer and all components, one profiled pass),
  peak RSS and peak RSS above the loaded pipeline (RSS after loading and a warm-up on
  short texts), and the spans predicted per doc;
- memory by stage: one pass over the corpus batch by batch (tokenizer, then each
  component's predict + set_annotations), in a fresh process, recording how much each
  stage raised the process's peak RSS: the rises add up to the peak above the loaded
  pipeline and say which stage set it, with the token count of the largest batch;
- training: words/s of one epoch of `nlp.update` (batches of `--train-batch-words` words,
  the config's dropout), from a fresh pipeline initialized on the corpus.

Every measurement runs in its own subprocess (one thread; PYTHONPATH set to the checkout
measured), and the checkouts alternate within each of `--rounds` rounds, so that both
see the same machine load; figures are medians over the rounds. Peak RSS is the
process's `ru_maxrss` (also checked with `os.wait4`).

The timed model is `--model` (a trained pipeline); with `--train-steps N` and no existing
`--model`, one is first trained for N steps with `spacy train --config` on `--train`,
keeping the `--labels` most frequent labels (the others' spans are dropped).

    python benchmarks/mixed_lengths.py --config configs/cpu.cfg \\
        --dev ../shared/data/cluener/dev.json --train ../shared/data/cluener/train.json \\
        --model /tmp/mixed/model --train-steps 600 --work /tmp/mixed \\
        --baseline /path/to/old/checkout --out results/mixed_lengths

writes `mixed_lengths.json` and `mixed_lengths.md` into `--out`.
"""
import argparse
import json
import os
import platform
import random
import resource
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
CORPORA = ("uniform", "mixed")
KINDS = ("infer", "stages", "train")
KEY = "sc"
# A short doc used for warming up must be shorter than this (characters).
WARMUP_MAX_CHARS = 200
WARMUP_TEXTS = 100

CharSpans = List[Tuple[int, int, str]]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu.cfg")
    parser.add_argument("--dev", type=Path, help="texts of the corpora (CLUENER JSON lines or JSONL)")
    parser.add_argument("--train", type=Path, help="training data for --train-steps (same format)")
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
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--train-batch-words", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_child", dest="child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None:
        missing = [name for name in ("dev", "model", "work", "out") if getattr(args, name) is None]
        if missing:
            parser.error("required: " + ", ".join("--" + name for name in missing))
    return args


# ---------------------------------------------------------------- corpora


def read_records(path: Path, fmt: str) -> List[Tuple[str, CharSpans]]:
    """(text, [(start_char, end_char, label)]) of every doc in a CLUENER or JSONL file."""
    import spacy

    from spacy_globalpointer.convert import read_cluener, read_jsonl

    reader = read_cluener if fmt == "cluener" else read_jsonl
    docs, _ = reader(path, spacy.blank("zh"), spans_key=KEY)
    return [(doc.text, [(s.start_char, s.end_char, s.label_) for s in doc.spans[KEY]]) for doc in docs]


def long_record(records: List[Tuple[str, CharSpans]], first: int, chars: int) -> Tuple[str, CharSpans]:
    """Consecutive records from `first` on, joined and cut to `chars` characters, with
    the gold spans that fit."""
    text, spans, i = "", [], first
    while len(text) < chars:
        piece, piece_spans = records[i % len(records)]
        spans += [(s + len(text), e + len(text), label) for s, e, label in piece_spans]
        text += piece
        i += 1
    return text[:chars], [span for span in spans if span[1] <= chars]


def build_corpora(records, n_docs: int, long_share: float, long_chars: int, seed: int) -> Dict[str, list]:
    """The uniform corpus (records repeated to n_docs) and the mixed one, where a seeded
    `long_share` of the docs are long."""
    short = [records[i % len(records)] for i in range(n_docs)]
    n_long = round(n_docs * long_share)
    positions = sorted(random.Random(seed).sample(range(n_docs), n_long))
    mixed = list(short)
    for k, position in enumerate(positions):
        mixed[position] = long_record(records, first=97 * k, chars=long_chars)
    return {"uniform": short, "mixed": mixed}


def keep_labels(records, labels: Sequence[str]):
    wanted = set(labels)
    return [(text, [s for s in spans if s[2] in wanted]) for text, spans in records]


def write_corpus(records, path: Path) -> None:
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank("zh")
    docs = []
    for text, spans in records:
        doc = nlp.make_doc(text)
        doc.spans[KEY] = [doc.char_span(s, e, label=label) for s, e, label in spans]
        if any(span is None for span in doc.spans[KEY]):
            raise ValueError(f"a gold span of {text[:40]!r} does not align with its tokens")
        docs.append(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=False).to_disk(path)


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


def child_infer(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time nlp.pipe over the corpus; peak RSS above the loaded, warmed-up pipeline."""
    import spacy

    sys.path.insert(0, str(HERE))
    from compare import _timed_components

    nlp = spacy.load(spec["model"])
    texts = [doc.text for doc in _read_docs(spec["corpus"], nlp.vocab)]
    warmup = [t for t in texts if len(t) < WARMUP_MAX_CHARS][:WARMUP_TEXTS]
    for _ in nlp.pipe(warmup, batch_size=spec["batch_size"]):
        pass
    baseline = _rss_mb()
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
    profile = _timed_components(nlp, texts, spec["batch_size"])
    total = sum(part["total"] for part in profile.values())
    component = profile.get("global_pointer", {})
    return {
        "words": words, "docs": len(texts), "spans": spans, "wall_s": walls, "cpu_s": cpus,
        "words_per_s": words / statistics.median(walls),
        "words_per_cpu_s": words / statistics.median(cpus),
        "baseline_mb": baseline, "peak_mb": peak, "above_baseline_mb": peak - baseline,
        "profile": profile,
        "share": component.get("total", 0.0) / total if total else None,
        "predict_share": component.get("predict", 0.0) / total if total else None,
        "set_annotations_share": component.get("set_annotations", 0.0) / total if total else None,
        **_package_info(),
    }


def child_stages(spec: Dict[str, Any]) -> Dict[str, Any]:
    """How much each stage of inference raises the peak RSS, batch by batch."""
    import spacy
    from spacy.util import minibatch

    nlp = spacy.load(spec["model"])
    texts = [doc.text for doc in _read_docs(spec["corpus"], nlp.vocab)]
    warmup = [t for t in texts if len(t) < WARMUP_MAX_CHARS][:WARMUP_TEXTS]
    for _ in nlp.pipe(warmup, batch_size=spec["batch_size"]):
        pass
    baseline = _rss_mb()
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


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    import torch

    torch.set_num_threads(1)
    result = {"infer": child_infer, "stages": child_stages, "train": child_train}[spec["kind"]](spec)
    print(json.dumps(result))


# ---------------------------------------------------------------- in the parent


def child_env(code: Path) -> Dict[str, str]:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = "1"
    env["PYTHONPATH"] = str(code)
    return env


def run_child(spec: Dict[str, Any], code: Path, log: Path) -> Dict[str, Any]:
    """One measurement in a fresh interpreter importing the package from `code`."""
    command = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    load_before = os.getloadavg()[0]
    with open(log, "w", encoding="utf8") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=child_env(code), text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text(encoding="utf8").strip().splitlines()[-3:]
        raise RuntimeError(f"measurement {spec['kind']} on {spec['corpus']} with {code} failed: {tail}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wait4_peak_mb"] = usage.ru_maxrss / 2**10
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if Path(result["package"]).resolve() != (code / "spacy_globalpointer").resolve():
        raise RuntimeError(f"measured {result['package']}, expected the package in {code}")
    return result


def train_model(args, labels: List[str]) -> Dict[str, Any]:
    """Train the timed model for --train-steps with `spacy train` (the code under test)."""
    records = keep_labels(read_records(args.train, args.format), labels)
    dev = keep_labels(read_records(args.dev, args.format), labels)[:500]
    write_corpus(records, args.work / "train.spacy")
    write_corpus(dev, args.work / "train_dev.spacy")
    output = args.work / "training"
    command = [
        sys.executable, "-m", "spacy", "train", str(args.config), "--output", str(output),
        "--paths.train", str(args.work / "train.spacy"), "--paths.dev", str(args.work / "train_dev.spacy"),
        "--training.max_steps", str(args.train_steps), "--training.eval_frequency", str(args.train_steps),
        "--system.seed", str(args.seed),
    ]
    start = time.perf_counter()
    with open(args.work / "train_model.log", "w", encoding="utf8") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(REPO), check=True)
    (output / "model-last").rename(args.model)
    return {"steps": args.train_steps, "seconds": time.perf_counter() - start, "trained_here": True}


def corpus_stats(records, long_chars: int) -> Dict[str, Any]:
    lengths = [len(text) for text, _ in records]
    return {
        "docs": len(records), "chars": sum(lengths), "longest": max(lengths),
        "long_docs": sum(n >= long_chars for n in lengths), "gold_spans": sum(len(s) for _, s in records),
    }


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over rounds, per (kind, code, corpus)."""
    cells: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["kind"], run["code"], run["corpus"]), []).append(run["result"])
    fields = ("words_per_s", "words_per_cpu_s", "peak_mb", "above_baseline_mb", "baseline_mb",
              "share", "set_annotations_share", "spans", "words", "largest_batch_tokens")
    out: Dict[str, Any] = {}
    for (kind, code, corpus), results in sorted(cells.items()):
        cell = {
            field: statistics.median(r[field] for r in results)
            for field in fields if all(r.get(field) is not None for r in results)
        }
        if "rises_mb" in results[0]:
            cell["rises_mb"] = {
                stage: statistics.median(r["rises_mb"][stage] for r in results) for stage in results[0]["rises_mb"]
            }
        out.setdefault(kind, {}).setdefault(code, {})[corpus] = cell
    return out


def targets(summary: Dict[str, Any], codes: List[str]) -> Dict[str, Any]:
    """The issue's three checks, for every code measured."""
    out: Dict[str, Any] = {}
    infer = summary.get("infer", {})
    for code in codes:
        cells = infer.get(code, {})
        if not all(corpus in cells for corpus in CORPORA):
            continue
        uniform, mixed = cells["uniform"], cells["mixed"]
        limit = 1.2 * uniform["above_baseline_mb"] + 50.0
        out[code] = {
            "mixed_over_uniform_words_per_s": mixed["words_per_s"] / uniform["words_per_s"],
            "mixed_over_uniform_words_per_cpu_s": mixed["words_per_cpu_s"] / uniform["words_per_cpu_s"],
            "above_baseline_ratio": mixed["above_baseline_mb"] / max(uniform["above_baseline_mb"], 1e-9),
            "above_baseline_limit_mb": limit,
            "above_baseline_within_limit": mixed["above_baseline_mb"] <= limit,
        }
    if "new" in infer and "old" in infer:
        for corpus in CORPORA:
            new, old = infer["new"].get(corpus), infer["old"].get(corpus)
            if new and old:
                out.setdefault("new_over_old", {})[corpus] = {
                    "words_per_s": new["words_per_s"] / old["words_per_s"],
                    "words_per_cpu_s": new["words_per_cpu_s"] / old["words_per_cpu_s"],
                }
    return out


def _fmt(value: Any, spec: str = ".0f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def write_markdown(path: Path, report: Dict[str, Any]) -> None:
    summary, checks = report["summary"], report["targets"]
    lines = [
        "# Mixed-length benchmark", "",
        f"Command: `{report['command']}`", "",
        f"Corpora: {json.dumps(report['corpora'])}", "",
        f"Model: {report['model']['path']} ({json.dumps(report['model']['info'])}). "
        f"Codes: {json.dumps(report['codes'])}. Rounds: {report['rounds']}, checkouts alternating "
        f"within each. Load average (1 min) at start {report['load_start']}, at end {report['load_end']}.",
        "",
        "Medians over rounds. Inference: `nlp.pipe`, batch size "
        f"{report['batch_size']}, one thread; 'above loaded' is peak RSS minus RSS after loading and a "
        "warm-up; share is global_pointer's predict + set_annotations of all components (one profiled pass). "
        "Training: one epoch of nlp.update from a fresh pipeline.",
        "",
        "| code | corpus | infer words/s | words/CPU-s | peak MB | above loaded MB | component share "
        "(set_annotations) | spans/doc | train words/s | train words/CPU-s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for code in report["codes"]:
        for corpus in CORPORA:
            infer = summary.get("infer", {}).get(code, {}).get(corpus, {})
            train = summary.get("train", {}).get(code, {}).get(corpus, {})
            spans_per_doc = infer["spans"] / report["corpora"][corpus]["docs"] if "spans" in infer else None
            lines.append(
                f"| {code} | {corpus} | {_fmt(infer.get('words_per_s'))} | {_fmt(infer.get('words_per_cpu_s'))} "
                f"| {_fmt(infer.get('peak_mb'))} | {_fmt(infer.get('above_baseline_mb'))} "
                f"| {_fmt(infer.get('share'), '.1f', 100)}% ({_fmt(infer.get('set_annotations_share'), '.1f', 100)}%) "
                f"| {_fmt(spans_per_doc, '.2f')} | {_fmt(train.get('words_per_s'))} "
                f"| {_fmt(train.get('words_per_cpu_s'))} |"
            )
    lines += ["", "| code | mixed / uniform words/s (CPU-s) | above-loaded RSS mixed / uniform | mixed within 1.2x uniform + 50 MB |",
              "|---|---:|---:|---|"]
    for code in report["codes"]:
        check = checks.get(code)
        if check:
            lines.append(
                f"| {code} | {check['mixed_over_uniform_words_per_s']:.2f} "
                f"({check['mixed_over_uniform_words_per_cpu_s']:.2f}) | {check['above_baseline_ratio']:.2f} "
                f"| {'yes' if check['above_baseline_within_limit'] else 'no'} "
                f"(limit {check['above_baseline_limit_mb']:.0f} MB) |"
            )
    stages = summary.get("stages", {})
    if stages:
        lines += [
            "", "Peak RSS above the loaded pipeline by the stage that raised it (one pass batch by batch, "
            "fresh process); the rises add up to the total.", "",
            "| code | corpus | tokens in the largest batch | total MB | MB per 1,000 tokens of the largest batch "
            "| MB raised by each stage |",
            "|---|---|---:|---:|---:|---|",
        ]
        for code in report["codes"]:
            for corpus in CORPORA:
                cell = stages.get(code, {}).get(corpus)
                if not cell:
                    continue
                rises = ", ".join(f"{stage} {value:.0f}" for stage, value in cell["rises_mb"].items())
                per_k = 1000 * cell["above_baseline_mb"] / cell["largest_batch_tokens"]
                lines.append(
                    f"| {code} | {corpus} | {cell['largest_batch_tokens']:.0f} | {cell['above_baseline_mb']:.0f} "
                    f"| {per_k:.1f} | {rises} |"
                )
    for corpus, ratio in checks.get("new_over_old", {}).items():
        lines.append(f"\nnew / old inference words/s on {corpus}: {ratio['words_per_s']:.3f} "
                     f"(per CPU-s {ratio['words_per_cpu_s']:.3f})")
    path.write_text("\n".join(lines) + "\n", encoding="utf8")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return {}
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    records = read_records(args.dev, args.format)
    label_counts = Counter(label for source in ([args.train] if args.train else [args.dev])
                           for _, spans in read_records(source, args.format) for _, _, label in spans)
    labels = sorted(label for label, _ in label_counts.most_common(args.labels))
    model_info: Dict[str, Any] = {"trained_here": False}
    if not args.model.exists():
        if not args.train_steps or args.train is None:
            parser_error = f"--model {args.model} does not exist; give --train and --train-steps to train it"
            raise SystemExit(parser_error)
        model_info = train_model(args, labels)
    performance = json.loads((args.model / "meta.json").read_text(encoding="utf8")).get("performance", {})
    model_info.update({f"dev_{k}": performance.get(f"spans_{KEY}_{k}") for k in ("p", "r", "f")})
    corpora = build_corpora(keep_labels(records, labels), args.n_docs, args.long_share, args.long_chars, args.seed)
    for name, corpus in corpora.items():
        write_corpus(corpus, args.work / f"{name}.spacy")
    codes = {"new": REPO}
    if args.baseline is not None:
        codes = {"old": args.baseline.resolve(), "new": REPO}
    runs = []
    for round_ in range(args.rounds):
        # Alternate which checkout goes first, so that neither always runs on a warmer machine.
        order = list(codes) if round_ % 2 == 0 else list(codes)[::-1]
        for kind in KINDS:
            for corpus in CORPORA:
                for code in order:
                    spec = {
                        "kind": kind, "corpus": str(args.work / f"{corpus}.spacy"), "model": str(args.model),
                        "config": str(args.config), "batch_size": args.batch_size, "repeats": args.repeats,
                        "batch_words": args.train_batch_words, "seed": args.seed,
                    }
                    log = args.work / f"{kind}_{corpus}_{code}_{round_}.log"
                    result = run_child(spec, codes[code], log)
                    runs.append({"round": round_, "kind": kind, "corpus": corpus, "code": code, "result": result})
                    speed = f"{result['words_per_s']:.0f} words/s, " if "words_per_s" in result else ""
                    print(f"round {round_} {kind:6} {corpus:7} {code}: {speed}"
                          f"peak {result['peak_mb']:.0f} MB ({result['above_baseline_mb']:.0f} above loaded), "
                          f"load {result['load_average']}", flush=True)
    summary = summarize(runs)
    command = "python benchmarks/mixed_lengths.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command,
        "corpora": {name: corpus_stats(corpus, args.long_chars) for name, corpus in corpora.items()},
        "labels": labels,
        "model": {"path": str(args.model), "info": model_info},
        "codes": {name: str(path) for name, path in codes.items()},
        "commits": {name: _git_commit(path) for name, path in codes.items()},
        "rounds": args.rounds, "batch_size": args.batch_size, "repeats": args.repeats,
        "load_start": round(load_start, 2), "load_end": round(os.getloadavg()[0], 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "summary": summary, "targets": targets(summary, list(codes)), "runs": runs,
    }
    (args.out / "mixed_lengths.json").write_text(json.dumps(report, indent=2), encoding="utf8")
    write_markdown(args.out / "mixed_lengths.md", report)
    print((args.out / "mixed_lengths.md").read_text(encoding="utf8"))
    return report


def _git_commit(path: Path) -> Optional[str]:
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode:
        return None
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "spacy_globalpointer"],
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


if __name__ == "__main__":
    main()
