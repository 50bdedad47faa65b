"""Thresholds and calibration of a trained global_pointer, fitted on one half of dev and
scored on the other.

Dev is cut in two halves by a seeded shuffle: A (fit) and B (held out). On B it reports
span P/R/F (spaCy's Scorer) at the default threshold 0.5, at the threshold that `spacy
find-threshold` picks on A (its default sweep 0, 0.1, ..., 1), and with per-label thresholds
tuned on A (`tune-thresholds`); then it fits per-label Platt scaling on A (`calibrate`) and
reports ECE (15 bins) and Brier score before and after on B, with a reliability diagram.

    python benchmarks/thresholds.py MODEL DEV.spacy --out results/thresholds

writes ``thresholds.json``, ``thresholds.md`` and ``reliability.png`` into ``--out``.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy
import spacy
from spacy.cli.find_threshold import find_threshold
from spacy.tokens import DocBin

from spacy_globalpointer.calibration import (
    calibrate_pipeline,
    calibration_report,
    collect_candidates,
    report_cuts,
    find_global_pointer,
    read_docs,
    score,
    split_in_halves,
    tune_pipeline,
)

TARGET_TUNED_GAIN = 1.0  # F1 points over threshold 0.5 on the held-out half
TARGET_ECE = 0.03
UPPER_FLOOR = 0.1


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained pipeline folder")
    parser.add_argument("dev", help="a .spacy DocBin with gold spans")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split in halves")
    parser.add_argument("--grid-step", type=float, default=0.05, help="per-label tuning grid step")
    parser.add_argument("--n-trials", type=int, default=11, help="find-threshold's trials (its default: 11)")
    return parser.parse_args(argv)


def _load_average() -> Optional[List[float]]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _prf(scores: Dict[str, Any], key: str) -> Dict[str, Any]:
    return {
        "p": scores[f"spans_{key}_p"],
        "r": scores[f"spans_{key}_r"],
        "f": scores[f"spans_{key}_f"],
        "per_type": {label: prf["f"] for label, prf in scores.get(f"spans_{key}_per_type", {}).items()},
    }


def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.time()
    report: Dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "model": str(args.model),
        "dev": str(args.dev),
        "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_start": _load_average()},
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nlp = spacy.load(args.model)
    report["load_warnings"] = [str(w.message) for w in caught]
    name, pipe = find_global_pointer(nlp)
    key = pipe.key
    metric = f"spans_{key}_f"
    fit, heldout = split_in_halves(read_docs(nlp, args.dev), args.seed)
    report["n_docs"] = {"fit": len(fit), "heldout": len(heldout)}
    results: Dict[str, Any] = {}
    results["default"] = {"threshold": pipe.threshold, **_prf(score(nlp, heldout), key)}

    with tempfile.TemporaryDirectory() as tmp:
        fit_path = Path(tmp) / "fit.spacy"
        DocBin(docs=fit, store_user_data=True).to_disk(fit_path)
        tic = time.time()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="global_pointer: a threshold of 0")
            warnings.filterwarnings("ignore", message="global_pointer: .* was saved when thresholds")
            best, best_f, sweep = find_threshold(
                str(args.model), fit_path, name, "threshold", metric, n_trials=args.n_trials
            )
        find_seconds = time.time() - tic
    pipe.threshold = float(best)
    results["find_threshold"] = {
        "threshold": float(best),
        "fit_f": best_f,
        "sweep_on_fit": {str(round(float(t), 3)): f for t, f in sweep.items()},
        "seconds": round(find_seconds, 1),
        **_prf(score(nlp, heldout), key),
    }
    pipe.threshold = results["default"]["threshold"]

    tic = time.time()
    tuned = tune_pipeline(nlp, fit, name=name, grid_step=args.grid_step)
    results["per_label"] = {
        "thresholds": tuned["thresholds"],
        "grid_step": args.grid_step,
        "folds": tuned["folds"],
        "shared_threshold": tuned["shared_threshold"],
        "unshrunk": tuned["unshrunk"],
        "weight": tuned["weight"],
        "cv_f": tuned["cv_f"],
        "fit_f_predicted": tuned["f"],
        "fit_f_scorer": score(nlp, fit)[metric],
        "seconds": round(time.time() - tic, 1),
        **_prf(score(nlp, heldout), key),
    }
    pipe.thresholds = {}
    # The same tuning without cross-validated shrinkage (every label at its own optimum on A).
    alone = tune_pipeline(nlp, fit, name=name, grid_step=args.grid_step, folds=1)
    results["per_label_alone"] = {"thresholds": alone["thresholds"], "fit_f_predicted": alone["f"], **_prf(score(nlp, heldout), key)}
    pipe.thresholds = {}

    tic = time.time()
    params, calibration = calibrate_pipeline(nlp, fit, heldout, name=name)
    calibration["seconds"] = round(time.time() - tic, 1)
    # The same probabilities on B's spans that either version scores >= 0.1: without the
    # mass of near-zero candidates that fills the first bin of the main figure.
    before, after = (numpy.ones(len(pipe.labels)), numpy.zeros(len(pipe.labels))), pipe.calibration_arrays()
    upper = collect_candidates(nlp, name, heldout, report_cuts(pipe.labels, before, after, UPPER_FLOOR))
    upper_report = calibration_report(upper, before, after, UPPER_FLOOR)
    calibration["upper"] = {
        "min_probability": UPPER_FLOOR,
        "n_spans": upper_report["n_spans"],
        "n_gold_spans": upper_report["n_gold_spans"],
        **{part: {k: upper_report[part][k] for k in ("ece", "brier")} for part in ("before", "after")},
    }
    results["calibrated"] = {"threshold": pipe.threshold, **_prf(score(nlp, heldout), key)}
    pipe.calibration = {}
    report["results"] = results
    report["calibration"] = calibration
    gain = (results["per_label"]["f"] - results["default"]["f"]) * 100
    report["targets"] = {
        "per_label_gain_f1_points": {"value": round(gain, 2), "target": f">= {TARGET_TUNED_GAIN}", "met": gain >= TARGET_TUNED_GAIN},
        "ece_after": {"value": round(calibration["after"]["ece"], 4), "target": f"<= {TARGET_ECE}", "met": calibration["after"]["ece"] <= TARGET_ECE},
    }
    report["machine"]["load_average_end"] = _load_average()
    report["seconds"] = round(time.time() - started, 1)
    return report


def format_markdown(report: Dict[str, Any]) -> str:
    results, cal = report["results"], report["calibration"]
    tuned = results["per_label"]
    n = report["n_docs"]
    lines = [
        f"Thresholds and calibration of `{report['model']}` on `{report['dev']}`: dev cut in halves "
        f"(seeded shuffle, seed {report['seed']}); fitted on half A ({n['fit']} docs), scored on "
        f"half B ({n['heldout']} docs) with spaCy's Scorer.",
        "",
        f"Command: `{report['command']}`. Load average (1, 5, 15 min) at start "
        f"{report['machine']['load_average_start']}, at end {report['machine']['load_average_end']} "
        f"({report['machine']['cpus']} CPUs); {report['seconds']} s in all.",
        "",
        "| decision rule (chosen on A) | P | R | F | F - F at 0.5 |",
        "|---|---:|---:|---:|---:|",
    ]
    base = results["default"]["f"]
    rows = [
        (f"threshold {results['default']['threshold']} (default)", results["default"]),
        (f"`spacy find-threshold`: {results['find_threshold']['threshold']:.1f}", results["find_threshold"]),
        ("per-label thresholds, each at its optimum on A (`tune-thresholds --folds 1`)", results["per_label_alone"]),
        (f"per-label thresholds (`tune-thresholds`: grid {results['per_label']['grid_step']}, weight "
         f"{results['per_label']['weight']} by {results['per_label']['folds']}-fold CV)", results["per_label"]),
        ("calibrated (`calibrate`), threshold 0.5", results["calibrated"]),
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['p'] * 100:.2f} | {r['r'] * 100:.2f} | {r['f'] * 100:.2f} | {(r['f'] - base) * 100:+.2f} |")
    lines += [
        "",
        f"find-threshold's sweep on A ({results['find_threshold']['seconds']} s): "
        + ", ".join(f"{t}: {f * 100:.2f}" for t, f in results["find_threshold"]["sweep_on_fit"].items()),
        "",
        f"Per-label tuning on A: best shared threshold {tuned['shared_threshold']}; "
        f"{tuned['folds']}-fold cross-validated micro F1 on A by weight of the per-label thresholds "
        "(0: the shared one, 1: each label's own): "
        + ", ".join(f"{w}: {f * 100:.2f}" for w, f in tuned["cv_f"].items())
        + f". With the chosen weight, F1 on A is {tuned['fit_f_predicted'] * 100:.2f} from the "
        f"candidate counts and {tuned['fit_f_scorer'] * 100:.2f} from the Scorer ({tuned['seconds']} s).",
        "",
        "| label | tuned threshold | alone | calibration scale a | bias b | B F at 0.5 | B F tuned |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, t in sorted(tuned["thresholds"].items()):
        params = cal["calibration"].get(label)
        a, b = (f"{params['scale']:.3f}", f"{params['bias']:.3f}") if params else ("-", "-")
        f_base = results["default"]["per_type"].get(label)
        f_tuned = results["per_label"]["per_type"].get(label)
        show = lambda f: f"{f * 100:.2f}" if f is not None else "-"  # noqa: E731
        lines.append(f"| {label} | {t:.3f} | {tuned['unshrunk'][label]:.2f} | {a} | {b} | {show(f_base)} | {show(f_tuned)} |")
    lines += [
        "",
        f"Calibration (Platt scaling per label, fitted on A's {cal['n_fit_spans']} candidate spans "
        f"with sigmoid(s) >= {cal['min_probability']}), scored on B's {cal['n_spans']} candidate "
        f"spans that either version scores >= {cal['min_probability']} ({cal['n_gold_spans']} of "
        f"them gold):",
        "",
        f"| probabilities | ECE ({cal['n_bins']} bins) | Brier |",
        "|---|---:|---:|",
        f"| sigmoid(s) (before) | {cal['before']['ece']:.4f} | {cal['before']['brier']:.4f} |",
        f"| sigmoid(a s + b) (after) | {cal['after']['ece']:.4f} | {cal['after']['brier']:.4f} |",
        "",
        f"The same on B's {cal['upper']['n_spans']} spans that either version scores >= "
        f"{cal['upper']['min_probability']} ({cal['upper']['n_gold_spans']} gold): ECE "
        f"{cal['upper']['before']['ece']:.4f} before, {cal['upper']['after']['ece']:.4f} after; Brier "
        f"{cal['upper']['before']['brier']:.4f} before, {cal['upper']['after']['brier']:.4f} after.",
        "",
        "Targets: " + "; ".join(
            f"{name} {t['value']} (target {t['target']}): {'met' if t['met'] else 'missed'}"
            for name, t in report["targets"].items()
        ) + ".",
        "",
        "![reliability diagram](reliability.png)",
    ]
    return "\n".join(lines) + "\n"


def plot_reliability(calibration: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    width = 1.0 / calibration["n_bins"]
    for name, color, shift in (("before", "tab:red", -0.25), ("after", "tab:blue", 0.25)):
        bins = [b for b in calibration[name]["bins"] if b["count"]]
        label = f"{name} (ECE {calibration[name]['ece']:.3f}, Brier {calibration[name]['brier']:.3f})"
        top.plot([b["mean_probability"] for b in bins], [b["gold_share"] for b in bins], "o-", color=color, label=label)
        bottom.bar([b["low"] + width * (0.5 + shift / 2) for b in bins], [b["count"] for b in bins],
                   width=width / 2, color=color, alpha=0.7)
    top.set_ylabel("share of gold spans")
    top.set_title(f"Reliability on the held-out half ({calibration['n_bins']} bins)")
    top.legend(loc="upper left", fontsize=8)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    bottom.set_yscale("log")
    bottom.set_ylabel("spans per bin")
    bottom.set_xlabel("predicted probability")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "thresholds.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf8")
    markdown = format_markdown(report)
    (args.out / "thresholds.md").write_text(markdown, encoding="utf8")
    plot_reliability(report["calibration"], args.out / "reliability.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
