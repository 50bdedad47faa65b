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
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

# The parts of this script live beside it and are imported as top-level modules (this script's folder
# is first on sys.path; a test that loads it by its path puts the folder there first):
#   compare_data.py    the train and dev data, prepared once for every system
#   compare_config.py  each system's config
#   compare_run.py     training, timing and scoring each system, in subprocesses
#   compare_report.py  the training logs summarised, compare.md and compare.png
#   compare_join.py    finished systems taken from earlier runs (--reuse, --join)
# Some of the names imported here are only for the scripts and tests that take them from this module.
from compare_config import REPO, SPAN_FINDER_SWEEP, SPAN_FINDER_THRESHOLD, SYSTEMS, _find_global_pointer, build_config
from compare_data import _read_docs, count_longer, prepare_corpora, resolve_max_span_length
from compare_join import _finished
from compare_report import _git_commit, _machine, _versions, format_markdown, plot, summarize_log
from compare_run import finish_system, infer_main, run_test, train_system, was_stopped

# Longest n-gram spancat suggests when --suggester-max-size is "auto" (the longest gold span, capped).
DEFAULT_MAX_SPAN_CAP = 25


# ---------------------------------------------------------------------------------------------
# Main


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
