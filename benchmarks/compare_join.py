"""--reuse and --join of benchmarks/compare.py: a system's finished result taken from OUT, from
another run's output folder (a parallel lane), or from the entry of a joined report made on the same
train and dev data, instead of training the system again; a run whose training was stopped by a
signal is finished with its best model so far."""
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from compare_run import was_stopped

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
