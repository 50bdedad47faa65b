"""The report of benchmarks/compare.py: each system's training log summarised (its best and last
evaluation, the curve, the throughput), the versions, machine and git commit of the run, the
Markdown tables of compare.md and the plot compare.png."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from compare_config import REPO, SPAN_FINDER_THRESHOLD


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
