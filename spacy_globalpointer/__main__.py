"""Command line: `python -m spacy_globalpointer convert|demo|evaluate|visualize|tune-thresholds|calibrate|annotate|raw-text ...`.

Exit codes: 0 done; 1 `--strict` found problems (nothing written), or `annotate --on-error fail` met
a bad record; 2 the input is not the format, is missing, or an argument is wrong.
"""
import argparse
import sys
from typing import Any, Dict, List, Optional

from .convert import FORMATS, MAX_LISTED_PROBLEMS, ConversionProblemsError, convert, read_bio
from .demo import DEFAULT_N_DEV, DEFAULT_N_TRAIN, DEFAULT_SEED, write_demo

EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
COLUMN_FORMATS = sorted(name for name, spec in FORMATS.items() if spec.reader is read_bio)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spacy_globalpointer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    formats = "\n".join(f"  {name:<14} {spec.description}" for name, spec in FORMATS.items())
    conv = commands.add_parser(
        "convert",
        help="convert an NER file to a .spacy DocBin with gold spans in doc.spans",
        description=f"Convert an NER file to a .spacy DocBin.\n\nformats:\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conv.add_argument("format", choices=list(FORMATS), metavar="FORMAT", help="one of: " + ", ".join(FORMATS))
    conv.add_argument("input", help="the file to read")
    conv.add_argument("output", help="the .spacy file to write (parent folders are created)")
    conv.add_argument("--lang", help="blank pipeline that tokenizes, e.g. zh or en (default per format; required for jsonl)")
    conv.add_argument("--spans-key", default="sc", help="doc.spans key for the gold spans (default: sc)")
    conv.add_argument("--strict", action="store_true", help="fail with exit code 1, writing nothing, on any problem")
    column = conv.add_argument_group(f"column formats ({', '.join(COLUMN_FORMATS)})")
    column.add_argument("--scheme", help="auto (default), bio/iob2, iob1 or bioes/iobes/bilou")
    column.add_argument("--group", help="sentence (default), document, or N sentences per doc")
    column.add_argument("--tag-column", type=int, help="column index of the tag (default: -1, the last)")
    column.add_argument("--docstart", help="first column of document-boundary lines (default: -DOCSTART-)")

    jsonl = conv.add_argument_group("jsonl format")
    jsonl.add_argument("--ignore-tokens", action="store_true",
                       help='tokenize "text" with --lang even where a record has its own "tokens"')
    jsonl.add_argument("--split-at-spans", action="store_true",
                       help="cut tokens at the gold spans' boundaries (uses the gold boundaries, as nested-NER "
                       "benchmarks do); for records without their own tokens")

    demo = commands.add_parser("demo", help="write the generated nested NER demo data (train/dev jsonl)")
    demo.add_argument("output_dir", help="folder for train.jsonl, dev.jsonl and README.md")
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED)
    demo.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN)
    demo.add_argument("--n-dev", type=int, default=DEFAULT_N_DEV)

    evaluate = commands.add_parser("evaluate", help="P/R/F overall and per type, as JSON and a markdown table")
    evaluate.add_argument("model", help="a trained pipeline folder or package name")
    evaluate.add_argument("data", help="a .spacy DocBin with gold spans")
    evaluate.add_argument("--output", help="JSON file to write")
    evaluate.add_argument("--table", help="markdown file to write")
    evaluate.add_argument("--gold-tokens", action="store_true",
                          help="predict on the data's own tokens (data converted with its own tokens, e.g. GENIA)")
    evaluate.add_argument("--threshold", type=float, help="decide with this threshold instead of the saved one")
    evaluate.add_argument("--nested-threshold", type=float,
                          help="decide with this nested_threshold instead of the saved one (candidates nested in or "
                               "around a prediction)")
    evaluate.add_argument("--gpu-id", type=int, default=-1, help="GPU to predict on, as in spacy evaluate (default: -1, CPU)")

    visualize = commands.add_parser("visualize", help="render predicted spans with displacy to an HTML page")
    visualize.add_argument("model", help="a trained pipeline folder or package name")
    visualize.add_argument("data", help="a .spacy DocBin whose texts are rendered")
    visualize.add_argument("output", help="the HTML file to write")
    visualize.add_argument("--limit", type=int, default=50, help="render the first N docs (default: 50)")
    raw = commands.add_parser(
        "raw-text",
        help="unlabelled text for spacy pretrain: the texts of DocBins as JSONL, each once",
        description="Write the distinct texts of converted DocBins as JSONL records {\"text\": ...}, "
        "what spacy pretrain reads through [corpora.pretrain] (paths.raw_text).",
    )
    raw.add_argument("output", help="the .jsonl file to write")
    raw.add_argument("inputs", nargs="+", help=".spacy DocBins whose texts are written")
    raw.add_argument("--exclude", nargs="+", default=[],
                     help="DocBins whose texts are left out (e.g. the dev set scores are reported on)")
    _add_threshold_parsers(commands)
    _add_annotate_parser(commands)
    return parser


def _add_annotate_parser(commands) -> None:
    from .annotate import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, INPUT_FORMATS, ON_ERROR, OUTPUT_FORMATS

    annotate = commands.add_parser(
        "annotate",
        help="annotate JSONL or text files with a trained pipeline into resumable JSONL/Parquet shards",
        description="Annotate JSONL (a 'text' field, other fields kept) or plain text (one doc per line) "
        "into OUTPUT_DIR/shards. Killed part-way, the same command resumes where it stopped.",
    )
    annotate.add_argument("model", help="a trained pipeline folder or package name")
    annotate.add_argument("input", help="a file, a folder (its .jsonl/.ndjson/.json/.txt files) or a quoted glob")
    annotate.add_argument("output_dir", help="folder for shards/, errors.jsonl, summary.json and job.json")
    annotate.add_argument("--n-process", type=int, default=1, help="worker processes, local engine (default: 1)")
    annotate.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                          help=f"docs per nlp.pipe batch (default: {DEFAULT_BATCH_SIZE})")
    annotate.add_argument("--gpu-id", type=int, default=-1, help="GPU for the local engine (default: -1, CPU)")
    annotate.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                          help=f"input lines per output shard, the unit of resumption (default: {DEFAULT_SHARD_SIZE})")
    annotate.add_argument("--input-format", choices=INPUT_FORMATS, default="auto",
                          help="auto (default: .jsonl/.ndjson/.json are JSONL, other files text), jsonl or text")
    annotate.add_argument("--output-format", choices=OUTPUT_FORMATS, default="jsonl",
                          help="jsonl (default) or parquet (needs pyarrow)")
    annotate.add_argument("--spans-key", help="doc.spans key to write out (default: the global_pointer's)")
    annotate.add_argument("--on-error", choices=ON_ERROR, default="skip",
                          help="skip (default: list bad records in errors.jsonl and go on) or fail (stop, exit code 1)")
    annotate.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = annotate.add_argument_group("Ray engine (needs spacy-globalpointer[ray])")
    ray.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray")
    ray.add_argument("--workers", type=int, default=1, help="actors, each with the pipeline loaded (default: 1)")
    ray.add_argument("--num-gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default: 0)")
    ray.add_argument("--ray-address", help="join this Ray cluster (e.g. auto or ray://host:10001); "
                     "without it Ray starts locally")


def _add_threshold_parsers(commands) -> None:
    tune = commands.add_parser(
        "tune-thresholds",
        help="pick each label's threshold on dev data (micro F1) and write a pipeline that uses them",
    )
    _model_data_output(tune)
    tune.add_argument("--heldout", help="a .spacy DocBin to report F1 on before and after (not used for tuning)")
    tune.add_argument("--grid-step", type=float, default=0.05, help="thresholds tried: step, 2*step, ... (default: 0.05)")
    tune.add_argument(
        "--folds", type=int, default=5,
        help="cross-validation folds that choose how far per-label thresholds may move from the "
        "best shared one (default: 5; 1 keeps them as tuned)",
    )

    calibrate = commands.add_parser(
        "calibrate",
        help="fit per-label Platt scaling of the probabilities on dev data and write the calibrated pipeline",
    )
    _model_data_output(calibrate)
    calibrate.add_argument(
        "--heldout",
        help="a .spacy DocBin to report ECE and Brier score on; without it, DATA is split in "
        "halves (seeded shuffle): calibration is fitted on one and reported on the other",
    )
    calibrate.add_argument("--seed", type=int, default=0, help="the seed of that split (default: 0)")
    calibrate.add_argument(
        "--min-probability", type=float, default=0.01,
        help="fit and report on candidate spans scored at least this probable (default: 0.01)",
    )


def _model_data_output(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", help="a trained pipeline folder or package name")
    command.add_argument("data", help="a .spacy DocBin with gold spans (dev data)")
    command.add_argument("--output", required=True, help="folder to write the pipeline to")
    command.add_argument("--component", help="the global_pointer component's name (default: the only one)")
    command.add_argument("--report", help="JSON file for the figures")
    command.add_argument("--gold-tokens", action="store_true",
                         help="predict on the data's own tokens (data converted with its own tokens, such as GENIA)")


def _column_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The column-format options given on the command line; ValueError if the format has none."""
    options = {
        name: getattr(args, name)
        for name in ("scheme", "group", "tag_column", "docstart")
        if getattr(args, name) is not None
    }
    if options and args.format not in COLUMN_FORMATS:
        flags = ", ".join("--" + name.replace("_", "-") for name in options)
        raise ValueError(f"{flags} only apply to the column formats ({', '.join(COLUMN_FORMATS)})")
    jsonl = {"use_tokens": not args.ignore_tokens, "split_at_spans": args.split_at_spans}
    if args.format == "jsonl":
        options.update(jsonl)
    elif args.ignore_tokens or args.split_at_spans:
        raise ValueError("--ignore-tokens and --split-at-spans only apply to the jsonl format")
    return options


def _run_convert(args: argparse.Namespace) -> int:
    try:
        report = convert(
            args.format, args.input, args.output, lang=args.lang, spans_key=args.spans_key, strict=args.strict,
            **_column_options(args),
        )
    except ConversionProblemsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.summary(), file=sys.stderr)
    if report.problems:
        print(f"first problems:\n{report.first_problems(MAX_LISTED_PROBLEMS)}", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    paths = write_demo(args.output_dir, seed=args.seed, n_train=args.n_train, n_dev=args.n_dev)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _run_raw_text(args: argparse.Namespace) -> int:
    from .convert import FormatError, write_raw_text

    try:
        counts = write_raw_text(args.inputs, args.output, exclude=args.exclude)
    except (FormatError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(", ".join(f"{name} {count}" for name, count in counts.items()), file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    result = evaluate(args.model, args.data, output_json=args.output, output_md=args.table, gold_tokens=args.gold_tokens,
                      threshold=args.threshold, nested_threshold=args.nested_threshold, gpu_id=args.gpu_id)
    print(format_table(result))
    return 0


def _run_visualize(args: argparse.Namespace) -> int:
    from .evaluate import visualize

    n_docs = visualize(args.model, args.data, args.output, limit=args.limit)
    print(f"wrote {args.output} ({n_docs} docs)", file=sys.stderr)
    return 0


def _run_annotate(args: argparse.Namespace) -> int:
    from .annotate import BadInputError, annotate, format_summary

    try:
        summary = annotate(
            args.model, args.input, args.output_dir, engine=args.engine, n_process=args.n_process,
            batch_size=args.batch_size, gpu_id=args.gpu_id, shard_size=args.shard_size,
            input_format=args.input_format, output_format=args.output_format, spans_key=args.spans_key,
            on_error=args.on_error, progress=not args.no_progress, workers=args.workers,
            num_gpus_per_worker=args.num_gpus_per_worker, ray_address=args.ray_address,
        )
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    except (ValueError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_summary(summary), file=sys.stderr)
def _write_report(path: Optional[str], report: Dict[str, Any]) -> None:
    if path:
        import json
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Python's json: srsly's keeps only 10 significant digits of a float.
        Path(path).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf8")
        print(f"wrote {path}", file=sys.stderr)


def _run_tune_thresholds(args: argparse.Namespace) -> int:
    import spacy

    from .calibration import find_global_pointer, read_docs, score, tune_pipeline

    try:
        nlp = spacy.load(args.model)
        name, pipe = find_global_pointer(nlp, args.component)
        sets = {"dev": read_docs(nlp, args.data)}
        if args.heldout:
            sets["heldout"] = read_docs(nlp, args.heldout)
        key = f"spans_{pipe.key}_f"
        before = {part: score(nlp, docs, gold_tokens=args.gold_tokens)[key] for part, docs in sets.items()}
        result = tune_pipeline(nlp, sets["dev"], name=name, grid_step=args.grid_step, folds=args.folds,
                               gold_tokens=args.gold_tokens)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    after = {part: score(nlp, docs, gold_tokens=args.gold_tokens)[key] for part, docs in sets.items()}
    nlp.to_disk(args.output)
    print("| label | threshold | tuned alone |\n|---|---:|---:|")
    for label, value in result["thresholds"].items():
        print(f"| {label} | {value:.3f} | {result['unshrunk'][label]:.2f} |")
    print(
        f"best shared threshold {result['shared_threshold']:.2f}; per-label weight {result['weight']} "
        f"(cross-validated micro F1 by weight: {result['cv_f'] or 'not run'})"
    )
    for part in sets:
        print(f"{part} {key}: {before[part] * 100:.2f} at the saved thresholds -> {after[part] * 100:.2f} tuned")
    print(f"wrote {args.output}", file=sys.stderr)
    _write_report(args.report, {**result, "score": key, "before": before, "after": after, "output": args.output})
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    import spacy

    from .calibration import calibrate_pipeline, find_global_pointer, read_docs, split_in_halves

    try:
        nlp = spacy.load(args.model)
        name, _ = find_global_pointer(nlp, args.component)
        docs = read_docs(nlp, args.data)
        if args.heldout:
            fit, heldout, where = docs, read_docs(nlp, args.heldout), args.heldout
        else:
            fit, heldout = split_in_halves(docs, args.seed)
            where = f"the other half of {args.data} ({len(heldout)} docs, seed {args.seed})"
        params, report = calibrate_pipeline(nlp, fit, heldout, name=name, min_probability=args.min_probability,
                                            gold_tokens=args.gold_tokens)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    nlp.to_disk(args.output)
    print("| label | scale a | bias b |\n|---|---:|---:|")
    for label, value in params.items():
        print(f"| {label} | {value['scale']:.3f} | {value['bias']:.3f} |")
    print(
        f"on {where}: {report['n_spans']} candidate spans scored >= {args.min_probability} "
        f"({report['n_gold_spans']} gold)"
    )
    for part in ("before", "after"):
        print(f"{part:>6}: ECE ({report['n_bins']} bins) {report[part]['ece']:.4f}, Brier {report[part]['brier']:.4f}")
    print(f"wrote {args.output}", file=sys.stderr)
    _write_report(args.report, {**report, "heldout": where, "output": args.output})
    return 0


COMMANDS = {
    "convert": _run_convert,
    "demo": _run_demo,
    "evaluate": _run_evaluate,
    "visualize": _run_visualize,
    "tune-thresholds": _run_tune_thresholds,
    "calibrate": _run_calibrate,
    "annotate": _run_annotate,
    "raw-text": _run_raw_text,
}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]) and return the exit code."""
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
