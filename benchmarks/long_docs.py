"""Long-document benchmark: time and peak memory of GlobalPointer on one long doc.

Measures, for one document of n tokens, inference only (no gradients):

- ``head``: the torch head alone (random inputs of the tok2vec width), banded
  (``band=w``) and full-matrix (``band=None``);
- ``pipeline``: ``nlp(doc)`` for a blank "en" pipeline with the default CPU tok2vec
  (width 96) and ``global_pointer`` (``max_span_length=w`` or None), i.e. tok2vec +
  head + writing ``doc.spans``. The pipeline is trained for a few steps on docs
  without entities first, so that, like a trained model, it predicts few spans
  (an untrained head would predict about half of all candidates).

Each measurement runs in a fresh subprocess, which reports its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``: tracemalloc does not see torch's memory)
and its RSS just before the measured calls (after imports and model set-up); time
is the median of ``--repeats`` calls. Full-matrix sizes grow until the next size's
predicted peak (quadratic in n) would pass ``--memory-limit-mb``.

    python benchmarks/long_docs.py --out results/long_docs

writes ``long_docs.json``, ``long_docs.md`` and ``long_docs.png`` into ``--out``.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HEADS = {"gp": "GlobalPointerHead", "egp": "EfficientGlobalPointerHead"}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536],
                        help="doc lengths (tokens) for the banded runs")
    parser.add_argument("--full-sizes", type=int, nargs="+",
                        default=[1024, 2048, 4096, 8192, 16384],
                        help="doc lengths tried without a band, in increasing order")
    parser.add_argument("--pipeline-sizes", type=int, nargs="*", default=None,
                        help="doc lengths for the pipeline runs (default: the head's sizes); "
                        "give the flag with no value to skip the pipeline")
    parser.add_argument("--band", type=int, default=32, help="band width w (max_span_length)")
    parser.add_argument("--types", type=int, default=10, help="number of entity types")
    parser.add_argument("--width", type=int, default=96, help="token vector width")
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--head", choices=sorted(HEADS), default="gp",
                        help="gp: GlobalPointerHead, egp: EfficientGlobalPointerHead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--memory-limit-mb", type=float, default=6000.0,
                        help="skip full-matrix sizes whose predicted peak RSS passes this")
    parser.add_argument("--pipeline-limit-mb", type=float, default=2048.0,
                        help="check: the largest banded pipeline run should stay under this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    parser.add_argument("--_measure", dest="measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is None and args.out is None:
        parser.error("--out is required")
    if args.pipeline_sizes is None:
        args.pipeline_sizes = list(args.sizes)
    return args


# ---------------------------------------------------------------- in the subprocess


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as file_:
            return int(file_.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_mb()


def _peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _time_calls(call, repeats: int) -> List[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure_head(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from spacy_globalpointer import torch_layers

    torch.manual_seed(0)
    head_class = getattr(torch_layers, HEADS[spec["head"]])
    head = head_class(spec["width"], spec["types"], head_size=spec["head_size"]).eval()
    n = spec["n"]
    X = torch.randn(1, n, spec["width"])
    lengths = torch.tensor([n])
    info: Dict[str, Any] = {}

    def call() -> None:
        with torch.inference_mode():
            scores = head(X, lengths, band=spec["band"])
        info["shape"] = list(scores.shape)
        info["finite"] = bool(torch.isfinite(scores).all())

    baseline = _rss_mb()
    times = _time_calls(call, spec["repeats"])
    return {**info, "times": times, "baseline_mb": baseline, "peak_mb": _peak_mb()}


def measure_pipeline(spec: Dict[str, Any]) -> Dict[str, Any]:
    import random

    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example

    from spacy_globalpointer.model import MAX_FULL_SCORES

    n, band, types = spec["n"], spec["band"], spec["types"]
    if band is None and types * n * n > MAX_FULL_SCORES:
        return {"status": f"refused: {types} x {n}^2 > MAX_FULL_SCORES ({MAX_FULL_SCORES})"}
    nlp = spacy.blank("en")
    architecture = {"gp": "GlobalPointer", "egp": "EfficientGlobalPointer"}[spec["head"]]
    model = {"@architectures": f"spacy-globalpointer.{architecture}.v1", "head_size": spec["head_size"]}
    pipe = nlp.add_pipe(
        "global_pointer", config={"max_span_length": band, "model": model}
    )
    rng = random.Random(0)
    words = [f"w{i}" for i in range(1000)]

    def make_doc(length: int) -> Doc:
        return Doc(nlp.vocab, words=[rng.choice(words) for _ in range(length)])

    examples = []
    for _ in range(4):
        doc = make_doc(40)
        gold = doc.copy()
        gold.spans[pipe.key] = []
        examples.append(Example(doc, gold))
    labels = [f"TYPE{i}" for i in range(types)]
    pipe.initialize(lambda: examples, nlp=nlp, labels=labels)
    optimizer = nlp.create_optimizer()
    for _ in range(10):
        nlp.update(examples, sgd=optimizer)
    doc = make_doc(n)
    info: Dict[str, Any] = {"predict_times": []}

    def call() -> None:
        # What nlp(doc) does for a Doc input, with the scoring timed on its own:
        # writing many spans can cost more than computing their scores.
        start = time.perf_counter()
        scores = pipe.predict([doc])
        info["predict_times"].append(time.perf_counter() - start)
        pipe.set_annotations([doc], scores)
        info["n_spans"] = len(doc.spans[pipe.key])

    baseline = _rss_mb()
    times = _time_calls(call, spec["repeats"])
    return {**info, "times": times, "baseline_mb": baseline, "peak_mb": _peak_mb()}


def run_in_subprocess(spec: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """One measurement in a fresh interpreter, so that its peak RSS is its own."""
    command = [sys.executable, os.path.abspath(__file__), "--_measure", json.dumps(spec)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return {"status": f"failed (exit {proc.returncode}): {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    import torch

    torch.set_num_threads(spec["threads"])
    measure = measure_head if spec["kind"] == "head" else measure_pipeline
    result = measure(spec)
    result.setdefault("status", "ok")
    print(json.dumps(result))


# ---------------------------------------------------------------- in the parent


def run_series(kind: str, mode: str, sizes: List[int], args) -> List[Dict[str, Any]]:
    """Measure one (kind, mode) for increasing n; full-matrix runs stop at the memory limit."""
    rows: List[Dict[str, Any]] = []
    previous: Optional[Dict[str, Any]] = None
    for n in sorted(sizes):
        band = args.band if mode == "band" else None
        row: Dict[str, Any] = {"kind": kind, "mode": mode, "n": n, "band": band}
        if mode == "full" and previous is not None:
            extra = previous["delta_mb"] * (n / previous["n"]) ** 2
            predicted = previous["baseline_mb"] + extra
            if predicted > args.memory_limit_mb:
                row["status"] = (
                    f"skipped: predicted peak {predicted:.0f} MB > {args.memory_limit_mb:.0f} MB"
                )
                rows.append(row)
                print(_format_row(row), flush=True)
                break
        spec = {
            "kind": kind, "n": n, "band": band, "types": args.types, "width": args.width,
            "head_size": args.head_size, "head": args.head, "repeats": args.repeats,
            "threads": args.threads,
        }
        row.update(run_in_subprocess(spec, args.timeout))
        if row.get("status") == "ok":
            row["time_s"] = statistics.median(row["times"])
            if row.get("predict_times"):
                row["predict_s"] = statistics.median(row["predict_times"])
            row["delta_mb"] = row["peak_mb"] - row["baseline_mb"]
            if previous is not None:
                row["time_ratio"] = row["time_s"] / previous["time_s"]
                row["peak_ratio"] = row["peak_mb"] / previous["peak_mb"]
                row["delta_ratio"] = row["delta_mb"] / max(previous["delta_mb"], 1e-9)
            previous = row
        rows.append(row)
        print(_format_row(row), flush=True)
        if row.get("status") != "ok" and mode == "full":
            break
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


HEADER = ("| kind | mode | n | time s | peak MB | above baseline MB | time ratio | peak ratio "
          "| above-baseline ratio | predict s | spans written | status |")


def _format_row(row: Dict[str, Any]) -> str:
    mode = f"w={row['band']}" if row["mode"] == "band" else "full"
    return (
        f"| {row['kind']} | {mode} | {row['n']} | {_fmt(row.get('time_s'), '.3f')} "
        f"| {_fmt(row.get('peak_mb'), '.0f')} | {_fmt(row.get('delta_mb'), '.0f')} "
        f"| {_fmt(row.get('time_ratio'), '.2f')} | {_fmt(row.get('peak_ratio'), '.2f')} "
        f"| {_fmt(row.get('delta_ratio'), '.2f')} | {_fmt(row.get('predict_s'), '.3f')} "
        f"| {_fmt(row.get('n_spans'), 'd')} | {row.get('status', '')} |"
    )


def pipeline_check(rows: List[Dict[str, Any]], limit_mb: float) -> Dict[str, Any]:
    banded = [r for r in rows if r["kind"] == "pipeline" and r["mode"] == "band"]
    done = [r for r in banded if r.get("status") == "ok"]
    if not done:
        return {"n": None, "peak_mb": None, "limit_mb": limit_mb, "passed": None}
    largest = max(done, key=lambda r: r["n"])
    return {
        "n": largest["n"], "band": largest["band"], "peak_mb": largest["peak_mb"],
        "limit_mb": limit_mb, "passed": largest["peak_mb"] <= limit_mb,
    }


def write_markdown(path: Path, config: Dict[str, Any], rows, check, command: str) -> None:
    lines = [
        "# Long-document benchmark",
        "",
        f"Command: `{command}`",
        "",
        "Config: " + ", ".join(f"{k}={v}" for k, v in config.items()),
        "",
        "Inference only. Peak MB is the measuring subprocess's peak RSS; 'above baseline' "
        "subtracts its RSS before the measured calls (interpreter, libraries, model). "
        "Ratios are to the previous n of the same kind and mode. For the pipeline, "
        "'time s' is tok2vec + head + writing doc.spans (what nlp(doc) does), 'predict s' "
        "the tok2vec + head part alone, and 'spans written' how many spans cleared the "
        "threshold: the pipeline was trained on 40-token docs without entities, so it "
        "scores spans of up to 40 tokens low, but longer ones (full matrix only) are "
        "never seen in training and many of them clear the threshold.",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
    ]
    lines += [_format_row(row) for row in rows]
    if check["n"] is not None:
        verdict = "within" if check["passed"] else "OVER"
        lines += [
            "",
            f"Check: pipeline (tok2vec + head), n={check['n']}, w={check['band']}: peak "
            f"{check['peak_mb']:.0f} MB, {verdict} the {check['limit_mb']:.0f} MB limit.",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf8")


def plot(path: Path, rows: List[Dict[str, Any]], band: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.5))
    series: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok":
            series.setdefault((row["kind"], row["mode"]), []).append(row)
    styles = {"band": "-o", "full": "--s"}
    colors = {("head", "band"): "C0", ("head", "full"): "C1",
              ("pipeline", "band"): "C2", ("pipeline", "full"): "C3"}
    for (kind, mode), points in sorted(series.items()):
        label = f"{kind}, {'w=' + str(band) if mode == 'band' else 'full matrix'}"
        color = colors[kind, mode]
        ns = [p["n"] for p in points]
        ax_time.plot(ns, [p["time_s"] for p in points], styles[mode], color=color, label=label)
        if kind == "pipeline":
            predict = [p["predict_s"] for p in points]
            ax_time.plot(ns, predict, ":x", color=color,
                         label=label.replace("pipeline", "pipeline, predict only"))
        ax_mem.plot(ns, [max(p["delta_mb"], 1e-3) for p in points], styles[mode], color=color,
                    label=label)
    for ax, ylabel in ((ax_time, "time per doc (s, median)"), (ax_mem, "peak RSS above baseline (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens in the doc")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("GlobalPointer on one long document (CPU, inference)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.measure is not None:
        child_main(args.measure)
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    config = {
        "band": args.band, "types": args.types, "width": args.width,
        "head_size": args.head_size, "head": HEADS[args.head], "repeats": args.repeats,
        "threads": args.threads, "memory_limit_mb": args.memory_limit_mb,
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    command = "python benchmarks/long_docs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(HEADER, flush=True)
    rows = run_series("head", "band", args.sizes, args)
    rows += run_series("head", "full", args.full_sizes, args)
    if args.pipeline_sizes:
        rows += run_series("pipeline", "band", args.pipeline_sizes, args)
        full_sizes = [n for n in args.full_sizes if n <= max(args.pipeline_sizes)]
        rows += run_series("pipeline", "full", full_sizes, args)
    check = pipeline_check(rows, args.pipeline_limit_mb)
    report = {"config": config, "command": command, "results": rows, "pipeline_check": check}
    (args.out / "long_docs.json").write_text(json.dumps(report, indent=2), encoding="utf8")
    write_markdown(args.out / "long_docs.md", config, rows, check, command)
    plot(args.out / "long_docs.png", rows, args.band)
    if check["n"] is not None:
        print(f"pipeline check: n={check['n']} peak {check['peak_mb']:.0f} MB "
              f"(limit {check['limit_mb']:.0f} MB): {'ok' if check['passed'] else 'OVER'}")
    print(f"wrote {args.out}/long_docs.json, long_docs.md, long_docs.png")
    return report


if __name__ == "__main__":
    main()
