"""Annotation throughput: `spacy apply` against `annotate` (1 and 2 processes) and `annotate
--engine ray` (1 and 2 actors), on one corpus of short docs, in one run.

The corpus is CLUENER train texts and CoNLL-2003 train sentences, alternating and repeated up to
`--n-docs` JSONL records. Each configuration is one command in a fresh process tree:

- docs/s and words/s (tokens of the model's tokenizer) over the command's wall time, as ratios to
  `spacy apply` in the same run; and the same after subtracting the command's fixed cost (its wall
  time on `--startup-docs` docs: imports, model loading, Ray's start);
- peak RSS of each worker (annotate's summary.json; `getrusage` in the worker) and of the largest
  process in the tree (`RUSAGE_CHILDREN` of a helper process that runs only this command);
- resume cost: the annotate command re-run on its finished output (wall s), and, in this process,
  the planning and listing that decide what is left (s);
- whether the 2-process and Ray outputs are byte-identical to the 1-process output.

    python benchmarks/annotate_speed.py --out results/annotate

writes `annotate_speed.json` and `annotate_speed.md` into `--out`. Without `--model` it uses
/work/cache/models/cluener_cpu/model-best if it exists, else trains configs/cpu.cfg for
`--train-steps` steps on the demo data (speed hardly depends on the weights; the JSON says which).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("GP_DATA_DIR", ROOT.parent / "shared" / "data"))
DEFAULT_MODEL = Path("/work/cache/models/cluener_cpu/model-best")
RUNS = {
    "spacy_apply": [],
    "annotate_1": ["--n-process", "1"],
    "annotate_2": ["--n-process", "2"],
    "ray_1": ["--engine", "ray", "--workers", "1"],
    "ray_2": ["--engine", "ray", "--workers", "2"],
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for annotate_speed.json/.md")
    parser.add_argument("--model", type=Path, help="pipeline folder (default: see above)")
    parser.add_argument("--train-steps", type=int, default=200, help="steps when a model must be trained")
    parser.add_argument("--n-docs", type=int, default=100_000)
    parser.add_argument("--startup-docs", type=int, default=200, help="docs of the fixed-cost runs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a temporary one, deleted)")
    return parser.parse_args(argv)


def load_average() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def corpus_texts() -> List[str]:
    """CLUENER train texts and CoNLL-2003 train sentences (tokens joined by spaces), alternating."""
    cluener = [json.loads(line)["text"] for line in (DATA / "cluener" / "train.json").open(encoding="utf8")]
    conll, words = [], []
    for line in (DATA / "conll2003" / "eng.train").open(encoding="utf8"):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                conll.append(" ".join(words))
            words = []
        else:
            words.append(parts[0])
    if words:
        conll.append(" ".join(words))
    mixed = [text for pair in zip(cluener, conll) for text in pair]
    longer = cluener if len(cluener) > len(conll) else conll
    return mixed + longer[min(len(cluener), len(conll)):]


def write_corpus(path: Path, n_docs: int) -> Dict[str, Any]:
    texts = corpus_texts()
    with path.open("w", encoding="utf8") as handle:
        for i in range(n_docs):
            handle.write(json.dumps({"text": texts[i % len(texts)]}, ensure_ascii=False) + "\n")
    chosen = [texts[i % len(texts)] for i in range(n_docs)]
    return {"n_docs": n_docs, "distinct_texts": len(texts), "chars": sum(map(len, chosen))}


def prepare_model(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """The model to run: --model, the cached CLUENER model, or configs/cpu.cfg trained on the demo data."""
    if args.model is not None:
        return {"path": str(args.model), "source": "given"}
    if DEFAULT_MODEL.exists():
        return {"path": str(DEFAULT_MODEL), "source": "CLUENER model trained with configs/cpu.cfg (cache)"}
    corpus = work / "demo"
    for split in ("train", "dev"):
        source = ROOT / "assets" / "demo" / f"{split}.jsonl"
        run([sys.executable, "-m", "spacy_globalpointer", "convert", "jsonl", str(source),
             str(corpus / f"{split}.spacy"), "--lang", "zh"])
    run([sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "cpu.cfg"),
         "--output", str(work / "trained"),
         "--paths.train", str(corpus / "train.spacy"), "--paths.dev", str(corpus / "dev.spacy"),
         "--training.max_steps", str(args.train_steps), "--training.eval_frequency", str(args.train_steps)])
    return {"path": str(work / "trained" / "model-last"),
            "source": f"configs/cpu.cfg trained {args.train_steps} steps on the demo data (assets/demo)"}


def environment() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["RAY_AUTH_MODE"] = "disabled"  # a throwaway local cluster
    return env


def run(command: List[str]) -> float:
    """Run `command`; its wall seconds."""
    started = time.perf_counter()
    proc = subprocess.run(command, env=environment(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def run_measured(command: List[str]) -> Dict[str, Any]:
    """`run` in a helper process, so that RUSAGE_CHILDREN covers this command's tree alone."""
    helper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "seconds = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'seconds': seconds, 'largest_process_mb': rss, 'returncode': proc.returncode,"
        " 'stderr': proc.stderr[-3000:]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", helper, *command], capture_output=True, text=True,
                          env=environment())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["returncode"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result['returncode']}):\n{result['stderr']}")
    return result


def command_for(name: str, model: str, corpus: Path, output: Path, args: argparse.Namespace) -> List[str]:
    if name == "spacy_apply":
        return [sys.executable, "-m", "spacy", "apply", model, str(corpus), str(output / "out.spacy"),
                "--force", "--batch-size", str(args.batch_size), "--n-process", "1"]
    return [sys.executable, "-m", "spacy_globalpointer", "annotate", model, str(corpus), str(output),
            "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size), "--no-progress",
            *RUNS[name]]


def measure(
    name: str, model: str, corpora: Dict[str, Path], work: Path, args: argparse.Namespace
) -> Dict[str, Any]:
    """The full run and the fixed-cost run of one configuration."""
    row: Dict[str, Any] = {"run": name, "load_before": load_average()}
    for kind in ("startup", "full"):
        output = work / f"{name}_{kind}"
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        result = run_measured(command_for(name, model, corpora[kind], output, args))
        row[f"{kind}_seconds"] = round(result["seconds"], 2)
        row[f"{kind}_largest_process_mb"] = round(result["largest_process_mb"], 1)
        summary_path = output / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            row[f"{kind}_docs"] = summary["docs"]
            row[f"{kind}_tokens"] = summary["tokens"]
            row[f"{kind}_workers"] = summary["this_run"]["workers"]
    row["command"] = " ".join(command_for(name, model, corpora["full"], work / f"{name}_full", args))
    row["load_after"] = load_average()
    return row


def shard_bytes(output: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((output / "shards").glob("*.jsonl"))}


def resume_cost(model: str, corpus: Path, work: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """Seconds to find that a finished job has nothing left: the whole command, and plan + listing."""
    sys.path.insert(0, str(ROOT))
    from spacy_globalpointer.annotate import plan_job

    output = work / "annotate_1_full"
    command = command_for("annotate_1", model, corpus, output, args)
    whole = run(command)
    started = time.perf_counter()
    job = plan_job(model, corpus, output, shard_size=args.shard_size)
    pending = job.pending()
    planning = time.perf_counter() - started
    return {"command_seconds": round(whole, 2), "plan_and_list_seconds": round(planning, 4),
            "shards": len(job.shards), "pending": len(pending), "command": " ".join(command)}


def add_ratios(rows: List[Dict[str, Any]], n_tokens: int) -> None:
    """docs/s, words/s, and ratios to spacy apply, over wall time and after the fixed cost."""
    by_name = {row["run"]: row for row in rows}
    for row in rows:
        docs = row.get("full_docs") or by_name.get("annotate_1", {}).get("full_docs")
        row["docs"] = docs
        row["docs_per_s"] = round(docs / row["full_seconds"], 1)
        row["words_per_s"] = round(n_tokens / row["full_seconds"], 1)
        row["net_seconds"] = round(row["full_seconds"] - row["startup_seconds"], 2)
        row["net_docs_per_s"] = round(docs / row["net_seconds"], 1) if row["net_seconds"] > 0 else None
    base = by_name.get("spacy_apply")
    for row in rows:
        if base is not None:  # same docs in every run: a speed ratio is the inverse time ratio
            row["x_spacy_apply"] = round(base["full_seconds"] / row["full_seconds"], 3)
            if row["net_seconds"] > 0 and base["net_seconds"] > 0:
                row["net_x_spacy_apply"] = round(base["net_seconds"] / row["net_seconds"], 3)


def targets(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The issue's targets: 2 workers >= 1.6x one; Ray's time overhead over annotate --n-process 2 <= 15%."""
    by_name = {row["run"]: row for row in rows}
    found: Dict[str, Any] = {}
    for two, one in (("annotate_2", "annotate_1"), ("ray_2", "ray_1"), ("ray_2", "annotate_1")):
        if two in by_name and one in by_name:
            wall = by_name[one]["full_seconds"] / by_name[two]["full_seconds"]
            net = by_name[one]["net_seconds"] / by_name[two]["net_seconds"]
            found[f"{two}_over_{one}"] = {
                "wall": round(wall, 3), "net": round(net, 3), "target": 1.6, "met_wall": wall >= 1.6,
                "met_net": net >= 1.6,
            }
    if "ray_2" in by_name and "annotate_2" in by_name:
        wall = by_name["ray_2"]["full_seconds"] / by_name["annotate_2"]["full_seconds"] - 1
        net = by_name["ray_2"]["net_seconds"] / by_name["annotate_2"]["net_seconds"] - 1
        found["ray_2_overhead_over_annotate_2"] = {
            "wall": round(wall, 3), "net": round(net, 3), "target": 0.15, "met_wall": wall <= 0.15,
            "met_net": net <= 0.15,
        }
    return found


def _git_commit() -> Optional[str]:
    run = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return run.stdout.strip() or None


def markdown(report: Dict[str, Any]) -> str:
    rows = report["results"]
    lines = [
        f"# Annotation throughput ({report['corpus']['n_docs']} docs, {report['n_tokens']} tokens)",
        "",
        f"`{report.get('command')}` at commit {report.get('git_commit')}, {report.get('date')}.",
        "",
        f"Model: {report['model']['source']} (`{report['model']['path']}`). Batch size "
        f"{report['config']['batch_size']}, shard size {report['config']['shard_size']}. Machine: "
        f"{report['machine']['cpus']} CPUs; load average {report['load_before']} before, {report['load_after']} after.",
        "",
        "| run | wall s | docs/s | words/s | x spacy apply | fixed cost s | docs/s after it | x spacy apply |"
        " peak RSS per worker MB | largest process MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        workers = ", ".join(f"{w['peak_rss_mb']:.0f}" for w in row.get("full_workers", [])) or "-"
        lines.append(
            f"| {row['run']} | {row['full_seconds']:.1f} | {row['docs_per_s']:.0f} | {row['words_per_s']:.0f} | "
            f"{row.get('x_spacy_apply', 1):.2f} | {row['startup_seconds']:.1f} | "
            f"{row['net_docs_per_s'] or 0:.0f} | {row.get('net_x_spacy_apply', 1):.2f} | {workers} | "
            f"{row['full_largest_process_mb']:.0f} |"
        )
    lines += ["", "| target | wall | after fixed cost | target | met (wall / after) |", "|---|---:|---:|---:|---|"]
    for name, target in report["targets"].items():
        lines.append(f"| {name} | {target['wall']:.3f} | {target['net']:.3f} | {target['target']} | "
                     f"{target['met_wall']} / {target['met_net']} |")
    resume = report.get("resume")
    if resume:
        lines += ["", f"Resume on a finished job ({resume['shards']} shards, {resume['pending']} left): the command "
                      f"takes {resume['command_seconds']:.1f} s; planning and listing take "
                      f"{resume['plan_and_list_seconds']:.3f} s."]
    same = report.get("identical_to_annotate_1", {})
    if same:
        lines += ["", "Output byte-identical to annotate_1: " + ", ".join(f"{k} {v}" for k, v in same.items())]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="annotate_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = prepare_model(args, work)
        corpora = {"full": work / "corpus.jsonl", "startup": work / "startup.jsonl"}
        corpus = write_corpus(corpora["full"], args.n_docs)
        write_corpus(corpora["startup"], args.startup_docs)
        report: Dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/annotate_speed.py"] + sys.argv[1:]),
            "git_commit": _git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "config": vars(args) | {"out": str(args.out), "model": None, "work_dir": str(work)},
            "machine": {
                "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            },
            "model": model, "corpus": corpus, "load_before": load_average(),
        }
        rows = []
        for name in args.runs:
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(measure(name, model["path"], corpora, work, args))
            print(f"  {rows[-1]['full_seconds']} s", file=sys.stderr, flush=True)
        n_tokens = next((row["full_tokens"] for row in rows if "full_tokens" in row), 0)
        add_ratios(rows, n_tokens)
        report.update(n_tokens=n_tokens, results=rows, targets=targets(rows))
        if "annotate_1" in args.runs:
            reference = shard_bytes(work / "annotate_1_full")
            report["identical_to_annotate_1"] = {
                name: shard_bytes(work / f"{name}_full") == reference
                for name in args.runs if name not in ("spacy_apply", "annotate_1")
            }
            report["resume"] = resume_cost(model["path"], corpora["full"], work, args)
        report["load_after"] = load_average()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "annotate_speed.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        (args.out / "annotate_speed.md").write_text(markdown(report))
        print(markdown(report))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
