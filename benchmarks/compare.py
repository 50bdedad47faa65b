"""Benchmark global_pointer side by side with spaCy's `ner` and `spancat`.

Every system is trained by `python -m spacy train` from one base config: the same tok2vec
component, optimizer, batcher, seed and step budget; only the task component differs.

    python benchmarks/compare.py --train corpus/cluener/train.spacy --dev corpus/cluener/dev.spacy \
        --config configs/cpu.cfg --max-steps 2000 --eval-frequency 200 --out results/cluener \
        [--systems global_pointer,efficient_global_pointer,ner,spancat] \
        [--limit-train N] [--limit-dev N] [--spans-key sc] [--suggester-max-size auto|N] \
        [--components.tok2vec.model.encode.width 32 ...]

Trailing `--section.key value` arguments override the base config (as in `spacy train`) for
every system. The gold spans are read from `doc.spans[spans_key]` of both DocBins.

Writes to --out: `corpus/` (the data each system trains on; `ner_*.spacy` carry `doc.ents`
= `filter_spans(doc.spans[key])`; `--corpus DIR` puts it elsewhere, and a folder prepared from
the same files is reused), one folder per system (`config.cfg`, `train.log`,
`train_log.jsonl`, `training/model-best`, `inference.json`, `result.json`), and
`compare.json`, `compare.md` and `compare.png` (dev F1 against training minutes).

A run that must end early (a time budget) can be stopped by a signal to its `spacy train`
(`pkill -f 'spacy train OUT/SYSTEM/config.cfg'`): that system is timed and scored with its best
model so far and marked stopped in the report, and the next system starts. A run recorded as
failed that way by an older version of this script is finished the same way by `--reuse`.

Timings: each training and each inference measurement runs in its own subprocess with one
thread (OMP/MKL/OpenBLAS and torch); its peak RSS comes from `os.wait4`. Train words/s is
words seen / seconds at the last evaluation, evaluation and checkpointing included (spaCy's
definition); `compare.json` also has an estimate without them. Inference words/s is the median
of `--repeats` timed `nlp.pipe(texts, batch_size=1000)` passes over the dev texts with
`model-best`, after a warm-up. A second pass calls each component's `predict` and
`set_annotations` batch by batch to give each component's share of the time.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

# The parts of this script live beside it and are imported as top-level modules (this script's folder
# is first on sys.path; a test that loads it by its path puts the folder there first):
#   compare_data.py    the train and dev data, prepared once for every system
#   compare_config.py  each system's config
# Some of the names imported here are only for the scripts and tests that take them from this module.
from compare_config import (
    GP_ARCHITECTURES, LOGGER_CODE, REPO, SPAN_FINDER_SWEEP, SPAN_FINDER_THRESHOLD, SYSTEMS, _find_global_pointer,
    build_config, score_prefix,
)
from compare_data import _read_docs, count_longer, prepare_corpora, resolve_max_span_length

# Components that are the shared encoder, not the task: excluded from the task's share of inference.
ENCODERS = ("tokenizer", "tok2vec", "transformer")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
# Longest n-gram spancat suggests when --suggester-max-size is "auto" (the longest gold span, capped).
DEFAULT_MAX_SPAN_CAP = 25


# ---------------------------------------------------------------------------------------------
# Subprocesses


def _child_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    # The checkout under test, not whatever copy of the package is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_measured(cmd: Sequence[str], log: Path, threads: int) -> Dict[str, Any]:
    """Run a command with stdout+stderr to `log`; its exit code, wall seconds and peak RSS (MB)."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf8") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=_child_env(threads))
        try:
            # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the max over all children.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    rss_mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {"returncode": proc.returncode, "wall_seconds": time.perf_counter() - start, "peak_rss_mb": rss_mb}


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# ---------------------------------------------------------------------------------------------
# Inference worker (runs in its own process: python compare.py _infer ...)


def _inputs(nlp, gold: list, gold_tokens: bool) -> list:
    """What the pipeline reads: the dev texts (so that timing includes the tokenizer), or new docs
    of the gold tokens (no annotations)."""
    from spacy_globalpointer.evaluate import unannotated_doc

    if not gold_tokens:
        return [doc.text for doc in gold]
    return [unannotated_doc(nlp, doc) for doc in gold]


def _timed_components(nlp, texts: list, batch_size: int) -> Dict[str, Dict[str, float]]:
    """Seconds per component over all texts: tokenizer, then each pipe's predict and set_annotations."""
    from spacy.util import minibatch

    times: Dict[str, Dict[str, float]] = {"tokenizer": {"total": 0.0}}
    start = time.perf_counter()
    docs = [nlp.make_doc(text) if isinstance(text, str) else text.copy() for text in texts]
    times["tokenizer"]["total"] = time.perf_counter() - start
    for name, proc in nlp.pipeline:
        predict = annotate = 0.0
        for batch in minibatch(docs, batch_size):
            if hasattr(proc, "predict") and hasattr(proc, "set_annotations"):
                t0 = time.perf_counter()
                scores = proc.predict(batch)
                t1 = time.perf_counter()
                proc.set_annotations(batch, scores)
                t2 = time.perf_counter()
                predict += t1 - t0
                annotate += t2 - t1
            else:  # a component without a model (e.g. a sentencizer) annotates in place
                t0 = time.perf_counter()
                for _ in proc.pipe(batch):
                    pass
                predict += time.perf_counter() - t0
        times[name] = {"predict": predict, "set_annotations": annotate, "total": predict + annotate}
    return times


def _score_against_gold(
    docs: list, gold: list, key: str, use_ents: bool, max_span_length: Optional[int] = None
) -> Dict[str, Any]:
    """P/R/F of the predictions against every gold span in doc.spans[key], overlaps allowed
    (for ner, whose own dev scores are against the filtered gold), and the recall of nested,
    flat, inner, outer (and long) gold spans (spacy_globalpointer.scoring)."""
    from spacy.scorer import Scorer
    from spacy.training import Example

    from spacy_globalpointer.scoring import recall_by_kind

    probe = "_compare"
    examples = []
    for pred, ref in zip(docs, gold):
        pred.spans[probe] = list(pred.ents) if use_ents else list(pred.spans.get(key, []))
        ref.spans[probe] = list(ref.spans.get(key, []))
        examples.append(Example(pred, ref))
    scores = Scorer.score_spans(
        examples, probe, getter=lambda doc, attr: doc.spans.get(probe, []), allow_overlap=True
    )
    by_kind = recall_by_kind(examples, probe, max_span_length=max_span_length)
    return {
        "p": scores[f"{probe}_p"],
        "r": scores[f"{probe}_r"],
        "f": scores[f"{probe}_f"],
        "per_type": scores[f"{probe}_per_type"],
        "recall_by_kind": {name[len(f"spans_{probe}_") : -len("_r")]: value for name, value in by_kind.items()},
    }


def _copies(inputs: list) -> list:
    """Texts as they are, docs copied: each timed pass starts from unannotated docs."""
    return [x if isinstance(x, str) else x.copy() for x in inputs]


def infer_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="compare.py _infer", description="Time one model on the dev texts.")
    parser.add_argument("model", type=Path)
    parser.add_argument("dev", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--spans-key", default="sc")
    parser.add_argument("--use-ents", action="store_true")
    parser.add_argument("--gold-tokens", action="store_true")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--span-finder-threshold", type=float, default=None,
                        help="set span_finder's threshold (e.g. the best of the dev sweep) instead of sweeping")
    args = parser.parse_args(argv)

    import spacy

    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ImportError:  # pragma: no cover
        pass
    load_start = time.perf_counter()
    nlp = spacy.load(args.model)
    load_seconds = time.perf_counter() - load_start
    if args.span_finder_threshold is not None:
        nlp.get_pipe("span_finder").cfg["threshold"] = args.span_finder_threshold
    gold = _read_docs(args.dev, nlp.vocab, 0)
    texts = _inputs(nlp, gold, args.gold_tokens)
    list(nlp.pipe(_copies(texts[: args.warmup]), batch_size=args.batch_size))
    runs, docs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        docs = list(nlp.pipe(_copies(texts), batch_size=args.batch_size))
        runs.append(time.perf_counter() - start)
    words = sum(len(doc) for doc in docs)
    seconds = statistics.median(runs)
    profiles = [_timed_components(nlp, texts, args.batch_size) for _ in range(args.repeats)]
    components = {
        name: {part: statistics.median(p[name][part] for p in profiles) for part in profiles[0][name]}
        for name in profiles[0]
    }
    profiled_total = sum(c["total"] for c in components.values())
    for c in components.values():
        c["share"] = c["total"] / profiled_total if profiled_total else 0.0
    # What the task costs: every component but the tokenizer and the shared encoder.
    task_share = sum(c["share"] for name, c in components.items() if name not in ENCODERS)
    band = next((proc.cfg.get("max_span_length") for _, proc in nlp.pipeline
                 if getattr(proc, "cfg", None) and "max_span_length" in proc.cfg), None)
    sweep = None
    if "span_finder" in nlp.pipe_names and args.span_finder_threshold is None:
        # span_finder's threshold decides which candidates spancat sees: report each on dev.
        finder = nlp.get_pipe("span_finder")
        trained_with = finder.cfg["threshold"]
        sweep = []
        for threshold in SPAN_FINDER_SWEEP:
            finder.cfg["threshold"] = threshold
            swept = list(nlp.pipe(_copies(texts), batch_size=args.batch_size))
            sweep.append({"threshold": threshold, **_score_against_gold(swept, gold, args.spans_key, False)})
        finder.cfg["threshold"] = trained_with
    result = {
        "n_texts": len(texts),
        "words": words,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seconds": runs,
        "median_seconds": seconds,
        "words_per_second": words / seconds if seconds else 0.0,
        "load_seconds": load_seconds,
        "components": components,
        "profiled_seconds": profiled_total,
        "threads": {var: os.environ.get(var) for var in THREAD_VARS},
        "task_share": task_share,
        "all_gold": _score_against_gold(docs, gold, args.spans_key, args.use_ents, band),
        "span_finder_threshold_sweep": sweep,
        "span_finder_threshold": nlp.get_pipe("span_finder").cfg["threshold"] if "span_finder" in nlp.pipe_names else None,
    }
    args.result.write_text(json.dumps(result, indent=2), encoding="utf8")
    return 0


# ---------------------------------------------------------------------------------------------
# Results


def read_log(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line.strip()]


def summarize_log(records: List[Dict[str, Any]], prefix: str) -> Dict[str, Any]:
    """The best evaluation, the curve and the training throughput. Of equal best scores the
    latest is taken: spaCy overwrites model-best on a tie, so that is the model measured."""
    if not records:
        return {}

    def prf(record):
        scores = record["scores"]
        return {k: scores.get(f"{prefix}_{k}", 0.0) for k in ("p", "r", "f")}

    best = max(records, key=lambda r: (r["score"] if r["score"] is not None else float("-inf"), r["step"]))
    last = records[-1]
    train_seconds = max(last["elapsed"] - last.get("eval_seconds", 0.0), 1e-9)
    return {
        "best": {
            "step": best["step"],
            "epoch": best["epoch"],
            "seconds": best["elapsed"],
            "minutes": best["elapsed"] / 60,
            "words": best["words"],
            **prf(best),
            "per_type": best["per_type"].get(f"{prefix}_per_type", {}),
        },
        "last": {"step": last["step"], "epoch": last["epoch"], "seconds": last["elapsed"], **prf(last)},
        "curve": [
            {"step": r["step"], "minutes": r["elapsed"] / 60, "words": r["words"], **prf(r)} for r in records
        ],
        "throughput": {
            "n_evaluations": len(records),
            "words": last["words"],
            "seconds": last["elapsed"],
            "eval_seconds": last.get("eval_seconds", 0.0),
            "words_per_second": last["words"] / last["elapsed"] if last["elapsed"] else 0.0,
            "words_per_second_excl_eval": last["words"] / train_seconds,
        },
    }


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("spacy", "thinc", "torch", "numpy", "spacy-globalpointer"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _machine() -> Dict[str, Any]:
    # Not GNU nproc: it reports OMP_NUM_THREADS, which the runs set to 1.
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _git_commit() -> Optional[str]:
    try:
        result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    except OSError:
        return None
    if result.returncode:
        return None
    return result.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _fmt(value: Optional[float], spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def format_markdown(report: Dict[str, Any]) -> str:
    systems = report["systems"]
    ner_wps = (systems.get("ner", {}).get("inference") or {}).get("words_per_second")
    lines = [
        "| system | best F | P | R | step of best | min to best | train words/s | infer words/s "
        "| infer x ner | train RSS MB | infer RSS MB | model MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in systems.items():
        if s.get("status") != "ok":
            lines.append(f"| {name} | failed: {s.get('error', '?')} |" + " |" * 10)
            continue
        best, train, inf = s["best"], s["train"], s["inference"]
        ratio = inf["words_per_second"] / ner_wps if ner_wps else None
        mark = " (stopped)" if s.get("stopped") else ""
        lines.append(
            f"| {name}{mark} | {_fmt(best['f'], scale=100)} | {_fmt(best['p'], scale=100)} | {_fmt(best['r'], scale=100)} "
            f"| {best['step']} | {_fmt(best['minutes'])} | {_fmt(train['words_per_second'], '.0f')} "
            f"| {_fmt(inf['words_per_second'], '.0f')} | {_fmt(ratio)} | {_fmt(train['peak_rss_mb'], '.0f')} "
            f"| {_fmt(inf['peak_rss_mb'], '.0f')} | {_fmt(s['model_mb'], '.1f')} |"
        )
    ok = {name: s for name, s in systems.items() if s.get("status") == "ok"}
    labels = sorted({label for s in ok.values() for label in s["best"]["per_type"]})
    if labels:
        lines += ["", "Per-type dev F at each system's best evaluation:", ""]
        lines.append("| type | " + " | ".join(ok) + " |")
        lines.append("|---|" + "---:|" * len(ok))
        for label in labels:
            cells = [_fmt(s["best"]["per_type"].get(label, {}).get("f"), scale=100) for s in ok.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ok:
        lines += [
            "",
            "Timing details: train minutes in all; of them evaluation and checkpointing (estimated); "
            "train words/s without them; the task component's share of inference time (predict + "
            "set_annotations, of tokenizer + all components); F against all gold spans (ner's own "
            "scores use the filter_spans gold).",
            "",
            "| system | train min | eval min | train words/s excl. eval | task share of inference (predict + set_annotations) | F all gold |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, s in ok.items():
            train, inf = s["train"], s["inference"]
            task = inf["components"].get(s["component"], {})
            profiled = inf["profiled_seconds"] or 1.0
            share = (
                f"{_fmt(inf.get('task_share', task.get('share')), '.1f', 100)}% "
                f"({_fmt(task.get('predict', 0) / profiled, '.1f', 100)} + "
                f"{_fmt(task.get('set_annotations', 0) / profiled, '.1f', 100)})"
            )
            lines.append(
                f"| {name} | {_fmt(train['seconds'] / 60)} | {_fmt(train['eval_seconds'] / 60)} "
                f"| {_fmt(train['words_per_second_excl_eval'], '.0f')} | {share} "
                f"| {_fmt(inf['all_gold']['f'], scale=100)} |"
            )
        kinds = [k for k in ("flat", "nested", "inner", "outer", "long")
                 if any(s["inference"]["all_gold"].get("recall_by_kind", {}).get(k) is not None for s in ok.values())]
        if "nested" in kinds:
            lines += [
                "",
                "Recall by kind of gold span (model-best on dev, all gold spans; nested = inside or containing "
                "another gold span, inner = inside one, outer = containing one, long = longer than the band):",
                "",
                "| system | " + " | ".join(f"{k} R" for k in kinds) + " | nested / flat |",
                "|---|" + "---:|" * (len(kinds) + 1),
            ]
            for name, s in ok.items():
                by_kind = s["inference"]["all_gold"].get("recall_by_kind", {})
                ratio = (by_kind["nested"] / by_kind["flat"]) if by_kind.get("nested") is not None and by_kind.get("flat") else None
                lines.append(f"| {name} | " + " | ".join(_fmt(by_kind.get(k), scale=100) for k in kinds) + f" | {_fmt(ratio)} |")
        for name, s in ok.items():
            sweep = s["inference"].get("span_finder_threshold_sweep")
            if sweep:
                cells = ", ".join(f"{row['threshold']}: F {_fmt(row['f'], scale=100)}" for row in sweep)
                best = max(sweep, key=lambda row: row["f"])
                lines += ["", f"{name}: span_finder threshold on dev (trained at {SPAN_FINDER_THRESHOLD}): {cells}; "
                          f"best {best['threshold']} (F {_fmt(best['f'], scale=100)})."]
    for name, s in ok.items():
        if s.get("stopped"):
            stop = s["stopped"]
            lines += ["", f"{name} (stopped): its training was stopped by signal {stop['signal']} after step "
                      f"{stop['last_step']} ({_fmt(stop['minutes'], '.1f')} min), before its patience or step budget "
                      "ran out; its figures are those of its best evaluation so far."]
    joined = {name: s["joined_from"] for name, s in ok.items() if s.get("joined_from")}
    if joined:
        lines += ["", "Taken from earlier reports (same train and dev data), not run again: "
                  + "; ".join(f"{name} from {source}" for name, source in joined.items()) + "."]
    tested = {name: s["test"] for name, s in ok.items() if "all_gold" in (s.get("test") or {})}
    if tested:
        lines += format_test(tested)
    data = report["data"]
    lines += [
        "",
        f"Data: train {data['train']['n_docs']} docs / {data['train']['n_spans']} spans, dev "
        f"{data['dev']['n_docs']} docs / {data['dev']['n_spans']} spans. ner: filter_spans dropped "
        f"{data['train']['ner_dropped_overlapping']} overlapping train spans and "
        f"{data['dev']['ner_dropped_overlapping']} dev spans. spancat suggests 1..{data['spancat_max_size']} "
        f"tokens ({data['train_spans_longer_than_max_size']} train and {data['dev_spans_longer_than_max_size']} "
        f"dev spans are longer).",
        f"Budget: {report['settings']['max_steps']} steps, evaluation every {report['settings']['eval_frequency']}, "
        f"seed {report['settings']['seed']}, {report['settings']['threads']} thread(s) per run, nproc "
        f"{report['machine']['nproc']}, load average at start {report['machine']['load_average']}.",
    ]
    return "\n".join(lines) + "\n"


def format_test(tested: Dict[str, Dict[str, Any]]) -> List[str]:
    """The test table: each system's model-best (chosen on dev) scored once on the test set."""
    path = next(iter(tested.values()))["path"]
    lines = [
        "",
        f"Test ({path}): model-best as chosen on dev, scored once against all gold spans; span_finder at "
        "the threshold that was best on dev.",
        "",
        "| system | test F | P | R | flat R | nested R | nested / flat | infer words/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in tested.items():
        gold, by_kind = t["all_gold"], t["all_gold"].get("recall_by_kind", {})
        nested, flat = by_kind.get("nested"), by_kind.get("flat")
        finder = f" (threshold {t['span_finder_threshold']})" if t.get("span_finder_threshold") is not None else ""
        lines.append(
            f"| {name}{finder} | {_fmt(gold['f'], scale=100)} | {_fmt(gold['p'], scale=100)} "
            f"| {_fmt(gold['r'], scale=100)} | {_fmt(flat, scale=100)} | {_fmt(nested, scale=100)} "
            f"| {_fmt(nested / flat if nested is not None and flat else None)} "
            f"| {_fmt(t.get('words_per_second'), '.0f')} |"
        )
    labels = sorted({label for t in tested.values() for label in t["all_gold"]["per_type"]})
    if labels:
        lines += ["", "Per-type test F:", "", "| type | " + " | ".join(tested) + " |", "|---|" + "---:|" * len(tested)]
        for label in labels:
            cells = [_fmt(t["all_gold"]["per_type"].get(label, {}).get("f"), scale=100) for t in tested.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot(report: Dict[str, Any], path: Path) -> bool:
    """compare.png (dev F1 against training minutes); False, with a note, without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed, so {path} was not drawn (pip install matplotlib)", file=sys.stderr)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in report["systems"].items():
        curve = s.get("curve") or []
        if not curve:
            continue
        (line,) = ax.plot([c["minutes"] for c in curve], [c["f"] * 100 for c in curve], marker=".", label=name)
        if s.get("best"):
            ax.plot([s["best"]["minutes"]], [s["best"]["f"] * 100], marker="*", markersize=12, color=line.get_color())
    ax.set_xlim(left=0)
    ax.set_xlabel("training minutes (evaluation included)")
    ax.set_ylabel("dev F1 (%)")
    settings = report["settings"]
    ax.set_title(f"{Path(settings['out']).name}: {settings['max_steps']} steps, {settings['threads']} thread(s) per run")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# Main


def run_system(
    system: str,
    config,
    out: Path,
    *,
    python: str,
    threads: int,
    dev: str,
    spans_key: str,
    repeats: int,
    component: str,
    gold_tokens: bool = False,
) -> Dict[str, Any]:
    folder = out / system
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.cfg"
    config.to_disk(config_path, interpolate=False)
    log_path = folder / "train_log.jsonl"
    if log_path.exists():
        log_path.unlink()
    prefix = score_prefix(system, spans_key)
    result: Dict[str, Any] = {
        "status": "failed",
        "component": component,
        "architecture": config["components"][component]["model"].get("@architectures"),
        "config": str(config_path),
        "score_prefix": prefix,
    }
    cmd = [python, "-m", "spacy", "train", str(config_path), "--output", str(folder / "training"),
           "--code", str(LOGGER_CODE)]
    print(f"[{system}] training: {shlex.join(cmd)}", flush=True)
    train = run_measured(cmd, folder / "train.log", threads)
    return finish_system(system, folder, result, train, python=python, threads=threads, dev=dev,
                         spans_key=spans_key, repeats=repeats, gold_tokens=gold_tokens)


def was_stopped(train: Dict[str, Any]) -> bool:
    """spacy train ended by a signal (Ctrl-C, kill, a job's time limit), not by an error."""
    return train.get("returncode", 0) < 0


def finish_system(
    system: str, folder: Path, result: Dict[str, Any], train: Dict[str, Any], *, python: str, threads: int,
    dev: str, spans_key: str, repeats: int, gold_tokens: bool,
) -> Dict[str, Any]:
    """Read the training log, then time and score model-best. A run stopped by a signal keeps
    what it learned: it is reported with its best evaluation so far and marked `stopped`."""
    component = result["component"]
    records = read_log(folder / "train_log.jsonl")
    summary = summarize_log(records, result["score_prefix"])
    result["train"] = {**train, **summary.pop("throughput", {})}
    result.update(summary)
    result.pop("error", None)
    model = folder / "training" / "model-best"
    if train["returncode"] != 0 and not (was_stopped(train) and records and model.is_dir()):
        result["error"] = f"spacy train exited with {train['returncode']}; see {folder / 'train.log'}"
        print(f"[{system}] FAILED\n{_tail(folder / 'train.log')}", flush=True)
        return result
    if was_stopped(train):
        result["stopped"] = {"signal": -train["returncode"], "last_step": records[-1]["step"],
                             "minutes": records[-1]["elapsed"] / 60}
        print(f"[{system}] stopped by signal {-train['returncode']} after step {records[-1]['step']}: "
              "reporting its best evaluation so far", flush=True)
    result["model_mb"] = _dir_mb(model)
    inference = run_inference(system, folder, dev, "inference", python=python, threads=threads,
                              spans_key=spans_key, repeats=repeats, gold_tokens=gold_tokens)
    if "error" in inference:
        result["error"] = inference["error"]
        return result
    result["inference"] = inference
    result["status"] = "ok"
    share = result["inference"]["task_share"]
    print(
        f"[{system}] best F {result['best']['f'] * 100:.2f} at step {result['best']['step']}; "
        f"train {result['train']['words_per_second']:.0f} words/s; "
        f"infer {result['inference']['words_per_second']:.0f} words/s ({component} {share * 100:.1f}% of it)",
        flush=True,
    )
    return result


def run_inference(
    system: str, folder: Path, docs: str, name: str, *, python: str, threads: int, spans_key: str,
    repeats: int, gold_tokens: bool, span_finder_threshold: Optional[float] = None,
) -> Dict[str, Any]:
    """Time FOLDER/training/model-best on DOCS and score it against all their gold spans
    (FOLDER/NAME.json, NAME.log); {"error": ...} if that fails."""
    out = folder / f"{name}.json"
    cmd = [python, str(Path(__file__).resolve()), "_infer", str(folder / "training" / "model-best"), docs,
           str(out), "--spans-key", spans_key, "--repeats", str(repeats)] \
        + (["--use-ents"] if system == "ner" else []) + (["--gold-tokens"] if gold_tokens else []) \
        + (["--span-finder-threshold", str(span_finder_threshold)] if span_finder_threshold is not None else [])
    print(f"[{system}] {name}: {shlex.join(cmd)}", flush=True)
    run = run_measured(cmd, folder / f"{name}.log", threads)
    if run["returncode"] != 0 or not out.is_file():
        print(f"[{system}] FAILED\n{_tail(folder / f'{name}.log')}", flush=True)
        return {"error": f"{name} exited with {run['returncode']}; see {folder / f'{name}.log'}"}
    return {**json.loads(out.read_text(encoding="utf8")), **run}


def run_test(system: str, result: Dict[str, Any], out: Path, test: Path, **kwargs: Any) -> Dict[str, Any]:
    """model-best (chosen on dev) scored once on the test DocBin; span_finder runs at the threshold
    that scored best in its dev sweep, so it is tuned on dev like everything else."""
    sweep = result["inference"].get("span_finder_threshold_sweep")
    threshold = max(sweep, key=lambda row: row["f"])["threshold"] if sweep else None
    test_result = run_inference(system, out / system, str(test), "test", repeats=1,
                                span_finder_threshold=threshold, **kwargs)
    return {"path": str(test), **test_result}


# The component whose scores are the system's, where it is not named after the system.
TASK_COMPONENTS = {"span_finder": "spancat"}


# What a joined report must share with this run for its systems to be comparable: the same docs and spans.
SAME_DATA_KEYS = ("n_docs", "n_words", "n_spans", "labels")


def _from_report(system: str, source: Path, out: Path, data: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A system's finished entry of a joined report (SOURCE is a compare.json or a folder holding only
    one, e.g. a committed results/ folder whose run folders are gone). The report must have been made
    on the same train and dev data; the entry is taken as it is (no model on disk to score again)."""
    report_path = source if source.is_file() else source / "compare.json"
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text(encoding="utf8"))
    result = report.get("systems", {}).get(system)
    if not result or result.get("status") != "ok":
        return None
    if data is not None:
        for split in ("train", "dev"):
            theirs, ours = report.get("data", {}).get(split, {}), data.get(split, {})
            differ = [key for key in SAME_DATA_KEYS if theirs.get(key) != ours.get(key)]
            if differ:
                raise SystemExit(f"--join {source}: its {split} data differs from this run's "
                                 f"({', '.join(differ)}), so its {system} is not comparable")
    (out / system).mkdir(parents=True, exist_ok=True)
    print(f"{system}: taking the entry of {report_path} (made by: {report.get('command', '?')})", flush=True)
    return {**result, "joined_from": str(report_path)}


def _finished(
    system: str, out: Path, others: Sequence[Path], finish: Optional[Callable] = None,
    data: Optional[Dict[str, Any]] = None,
) -> Optional[Dict[str, Any]]:
    """A system's finished result from OUT or one of the joined output folders (copied into OUT), or
    else from a joined report's entry (`_from_report`). A run whose training was stopped by a signal,
    which an older run of this script recorded as failed, is finished with `finish(folder, result)`
    (its best so far, marked stopped)."""
    import shutil

    for folder in [out] + [Path(o).resolve() for o in others]:
        previous = folder / system / "result.json"
        if not previous.exists():
            if folder != out:
                result = _from_report(system, folder, out, data)
                if result is not None:
                    return result
            continue
        result = json.loads(previous.read_text(encoding="utf8"))
        if result.get("status") != "ok" and finish is not None and was_stopped(result.get("train", {})):
            if folder != out:
                shutil.copytree(folder / system, out / system, dirs_exist_ok=True)
            print(f"{system}: finishing {previous}, whose training was stopped", flush=True)
            train = {k: result["train"][k] for k in ("returncode", "wall_seconds", "peak_rss_mb")}
            result = finish(out / system, result, train)
            if result.get("status") == "ok":
                return result
            continue
        if result.get("status") != "ok":
            continue
        if folder != out:
            shutil.copytree(folder / system, out / system, dirs_exist_ok=True)
        print(f"{system}: reusing {previous}", flush=True)
        return result
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train global_pointer, efficient_global_pointer, ner and spancat on the same data, "
        "tok2vec and budget; compare accuracy, speed, memory and size.",
        epilog="Trailing --section.key value arguments override the base config for every system, as in "
        "spacy train: e.g. --components.global_pointer.max_span_length 20 --training.optimizer.learn_rate 0.002. "
        "Parallel lanes: run --systems A,B --out OUT and --systems C --out OUT_C at once, then the same "
        "command with --systems A,B,C --out OUT --join OUT_C writes the joined report without training again.",
    )
    parser.add_argument("--train", type=Path, required=True, help="train DocBin, gold spans in doc.spans[KEY]")
    parser.add_argument("--dev", type=Path, required=True, help="dev DocBin, gold spans in doc.spans[KEY]")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu.cfg",
                        help="base config with a tok2vec and a global_pointer component")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {','.join(SYSTEMS)}")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--eval-frequency", type=int, default=200)
    parser.add_argument("--patience", type=int, default=None,
                        help="stop a system after this many steps without a better dev score (training.patience; "
                        "default: the base config's). With a large --max-steps this trains to convergence")
    parser.add_argument("--seed", type=int, default=None, help="default: the base config's system.seed")
    parser.add_argument("--limit-train", type=int, default=0, help="use the first N train docs (0: all)")
    parser.add_argument("--limit-dev", type=int, default=0, help="use the first N dev docs (0: all)")
    parser.add_argument("--test", type=Path, default=None,
                        help="test DocBin: each system's model-best (chosen on dev) is also scored on it once; "
                        "with --reuse/--join, finished systems without a test score get one")
    parser.add_argument("--spans-key", default="sc")
    parser.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                        help="where the prepared train/dev DocBins go (default OUT/corpus); a folder prepared "
                        "from the same files and settings is reused, so runs can share one")
    parser.add_argument("--gold-tokens", action="store_true",
                        help="train and predict on the DocBins' own tokens (corpora gold_preproc; docs of the gold "
                        "words at inference), for data converted with its own tokens such as GENIA")
    parser.add_argument("--suggester-max-size", "--max-span-length", dest="suggester_max_size", default="auto",
                        help="spancat's longest suggested n-gram and span_finder's max_length: 'auto' (the longest "
                        "train span, capped by --max-span-cap) or N. global_pointer's band is its own "
                        "max_span_length: set it with a trailing --components.global_pointer.max_span_length N")
    parser.add_argument("--max-span-cap", type=int, default=DEFAULT_MAX_SPAN_CAP)
    parser.add_argument("--threads", type=int, default=1, help="threads per run (OMP/MKL/OpenBLAS/torch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes (median)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the subprocesses")
    parser.add_argument("--reuse", action="store_true",
                        help="take a system's finished OUT/SYSTEM/result.json instead of training it again; "
                             "a system whose training was stopped by a signal (Ctrl-C, kill, a time limit) is "
                             "timed and scored with its best model so far, and marked stopped")
    parser.add_argument("--join", type=Path, action="append", default=[], metavar="OTHER_OUT",
                        help="take finished systems from another run's output folder (e.g. a parallel lane "
                        "with --systems spancat), or from a report alone (a compare.json, or a folder holding "
                        "one, made on the same train and dev data); repeatable; implies --reuse")
    return parser


def train_system(system: str, base, args: argparse.Namespace, data: Dict[str, Any], out: Path, seed,
                 max_size: int, gp_name: str) -> Dict[str, Any]:
    ner = system == "ner"
    config = build_config(
        base, system,
        train=data["paths"]["ner_train" if ner else "train"],
        dev=data["paths"]["ner_dev" if ner else "dev"],
        spans_key=args.spans_key, max_span_length=max_size, max_steps=args.max_steps,
        eval_frequency=args.eval_frequency, seed=seed, log_path=str(out / system / "train_log.jsonl"),
        patience=args.patience, gold_tokens=args.gold_tokens,
    )
    component = gp_name if system in GP_ARCHITECTURES else TASK_COMPONENTS.get(system, system)
    return run_system(
        system, config, out, python=args.python, threads=args.threads, dev=data["paths"]["dev"],
        spans_key=args.spans_key, repeats=args.repeats, component=component, gold_tokens=args.gold_tokens,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_infer"]:
        return infer_main(argv[1:])
    args, extra = _parser().parse_known_args(argv)
    from spacy.cli._util import parse_config_overrides
    from spacy.util import load_config

    overrides = parse_config_overrides(extra)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise SystemExit(f"--systems: unknown {unknown or 'empty list'}; choose from {', '.join(SYSTEMS)}")
    if args.max_steps < 1 or args.eval_frequency < 1:
        raise SystemExit("--max-steps and --eval-frequency must be >= 1")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, overrides=overrides, interpolate=False)
    gp_name = _find_global_pointer(base)
    seed = args.seed if args.seed is not None else base["system"].get("seed")
    started = datetime.datetime.now().astimezone()
    data = prepare_corpora(
        args.train, args.dev, out, lang=base["nlp"]["lang"], spans_key=args.spans_key,
        limit_train=args.limit_train, limit_dev=args.limit_dev,
        folder=args.corpus.resolve() if args.corpus else None,
    )
    max_size = resolve_max_span_length(args.suggester_max_size, data["train"]["longest_span"], args.max_span_cap)
    data["spancat_max_size"] = max_size
    for split in ("train", "dev"):
        data[f"{split}_spans_longer_than_max_size"] = count_longer(data[split], max_size)
    print(
        f"data: train {data['train']['n_docs']} docs, {data['train']['n_spans']} spans; dev "
        f"{data['dev']['n_docs']} docs, {data['dev']['n_spans']} spans; ner drops "
        f"{data['train']['ner_dropped_overlapping']} train / {data['dev']['ner_dropped_overlapping']} dev "
        f"overlapping spans; spancat max_size {max_size}",
        flush=True,
    )
    report: Dict[str, Any] = {
        "command": shlex.join([sys.executable, str(Path(__file__))] + argv),
        "argv": argv,
        "date": started.isoformat(timespec="seconds"),
        "versions": _versions(),
        "machine": _machine(),
        "git_commit": _git_commit(),
        "settings": {
            "train": str(args.train), "dev": str(args.dev), "config": str(args.config), "out": str(out),
            "overrides": overrides, "systems": systems, "max_steps": args.max_steps,
            "eval_frequency": args.eval_frequency, "seed": seed, "spans_key": args.spans_key,
            "limit_train": args.limit_train, "limit_dev": args.limit_dev,
            "suggester_max_size": args.suggester_max_size, "patience": args.patience,
            "gold_tokens": args.gold_tokens, "test": str(args.test) if args.test else None,
            "threads": args.threads, "repeats": args.repeats,
            "inference_batch_size": 1000,
        },
        "data": data,
        "systems": {},
    }
    def finish(folder: Path, result: Dict[str, Any], train: Dict[str, Any]) -> Dict[str, Any]:
        return finish_system(folder.name, folder, result, train, python=args.python, threads=args.threads,
                             dev=data["paths"]["dev"], spans_key=args.spans_key, repeats=args.repeats,
                             gold_tokens=args.gold_tokens)

    for system in systems:
        result = _finished(system, out, args.join, finish, data) if (args.reuse or args.join) else None
        if result is None:
            result = train_system(system, base, args, data, out, seed, max_size, gp_name)
        untested = args.test and (result.get("test") or {}).get("path") != str(args.test)
        if untested and "joined_from" in result and not (out / system / "training" / "model-best").is_dir():
            print(f"[{system}] no test score: joined from {result['joined_from']} without its model", flush=True)
        elif untested and result.get("status") == "ok":
            result["test"] = run_test(
                system, result, out, args.test, python=args.python, threads=args.threads,
                spans_key=args.spans_key, gold_tokens=args.gold_tokens,
            )
        (out / system / "result.json").write_text(json.dumps(result, indent=2), encoding="utf8")
        report["systems"][system] = result
    report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    (out / "compare.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf8")
    table = format_markdown(report)
    (out / "compare.md").write_text(table, encoding="utf8")
    plot(report, out / "compare.png")
    print(table)
    failed = [name for name, s in report["systems"].items() if s.get("status") != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
