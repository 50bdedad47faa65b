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
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

# The parts of this script live beside it and are imported as top-level modules (this script's folder
# is first on sys.path; a test that loads it by its path puts the folder there first):
#   compare_data.py    the train and dev data, prepared once for every system
#   compare_config.py  each system's config
#   compare_report.py  the training logs summarised, compare.md and compare.png
# Some of the names imported here are only for the scripts and tests that take them from this module.
from compare_config import (
    GP_ARCHITECTURES, LOGGER_CODE, REPO, SPAN_FINDER_SWEEP, SPAN_FINDER_THRESHOLD, SYSTEMS, _find_global_pointer,
    build_config, score_prefix,
)
from compare_data import _read_docs, count_longer, prepare_corpora, resolve_max_span_length
from compare_report import _git_commit, _machine, _versions, format_markdown, plot, read_log, summarize_log

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
