"""The runs of benchmarks/compare.py: each system trained by `spacy train`, and its model-best timed
and scored by the inference worker (`compare.py _infer`), each in a subprocess of its own with its
wall time and peak RSS; the worker times `nlp.pipe` over the dev texts, profiles each component and
scores the predictions against all gold spans (and once on the test set)."""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from compare_config import GP_ARCHITECTURES, HERE, LOGGER_CODE, REPO, SPAN_FINDER_SWEEP, build_config, score_prefix
from compare_data import _read_docs
from compare_report import read_log, summarize_log

# The command-line entry point, whose `_infer` command runs infer_main (the inference worker).
SCRIPT = HERE / "compare.py"
# Components that are the shared encoder, not the task: excluded from the task's share of inference.
ENCODERS = ("tokenizer", "tok2vec", "transformer")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


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
# Training and scoring a system


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
    cmd = [python, str(SCRIPT), "_infer", str(folder / "training" / "model-best"), docs,
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
