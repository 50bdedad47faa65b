"""A `spacy train` logger that writes one JSON line per evaluation, for benchmarks/compare.py.

    python -m spacy train CONFIG --code benchmarks/jsonl_logger.py

    [training.logger]
    @loggers = "spacy-globalpointer.JSONLLogger.v1"
    path = "train_log.jsonl"
    console = true

Each line holds: step, epoch, `elapsed` (float seconds since the logger was set up, right before
the training loop starts; spaCy's own `seconds` is an int), `words` (tokens seen so far), `losses`
(summed since the previous evaluation), `score` (the weighted score that picks model-best),
`scores` (every numeric top-level score: P/R/F, speed), `per_type` (the `*_per_type` dicts),
`best` (whether this evaluation is the best so far, as spaCy decides it) and `eval_seconds`, an
estimate of the time spent so far on evaluating and checkpointing: each evaluation step's
duration minus the median duration of the plain steps before it.
"""
import json
import statistics
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from spacy.training.loggers import console_logger_v3
from spacy.util import registry

LogStep = Callable[[Optional[Dict[str, Any]]], None]


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split_scores(other_scores: Dict[str, Any]) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """(numeric top-level scores, per-type score dicts) from an evaluation's `other_scores`."""
    scores, per_type = {}, {}
    for key, value in (other_scores or {}).items():
        if _numeric(value):
            scores[key] = float(value)
        elif key.endswith("_per_type") and isinstance(value, dict):
            per_type[key] = {
                label: {name: float(v) for name, v in prf.items() if _numeric(v)}
                for label, prf in value.items()
                if isinstance(prf, dict)
            }
    return scores, per_type


@registry.loggers("spacy-globalpointer.JSONLLogger.v1")
def make_jsonl_logger(path: str, console: bool = True):
    """A logger that writes one JSON line per evaluation to `path` (truncated when training
    starts) and, with `console`, also prints spaCy's usual table."""
    log_path = Path(path)

    def setup(nlp, stdout: IO = sys.stdout, stderr: IO = sys.stderr) -> Tuple[LogStep, Callable[[], None]]:
        console_step, console_finalize = (
            console_logger_v3(progress_bar=None)(nlp, stdout, stderr) if console else (None, None)
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "w", encoding="utf8")
        start = last = time.perf_counter()
        plain_steps: List[float] = []
        eval_seconds = 0.0

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            nonlocal last, eval_seconds
            now = time.perf_counter()
            duration, last = now - last, now
            if console_step is not None:
                console_step(info)
            if info is None:
                plain_steps.append(duration)
                return
            # An evaluation step is an update, an evaluation and a checkpoint; the update
            # costs about what the plain steps before it cost.
            update = statistics.median(plain_steps) if plain_steps else 0.0
            eval_seconds += max(duration - update, 0.0)
            plain_steps.clear()
            scores, per_type = _split_scores(info.get("other_scores"))
            checkpoints = info.get("checkpoints") or []
            score = float(info["score"]) if info.get("score") is not None else None
            record = {
                "step": int(info["step"]),
                "epoch": int(info["epoch"]),
                "elapsed": round(now - start, 4),
                "seconds": info.get("seconds"),
                "words": int(info["words"]),
                "eval_seconds": round(eval_seconds, 4),
                "losses": {name: float(v) for name, v in (info.get("losses") or {}).items()},
                "score": score,
                "best": bool(checkpoints) and score == max(c[0] for c in checkpoints),
                "scores": scores,
                "per_type": per_type,
            }
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            stream.flush()

        def finalize() -> None:
            stream.close()
            if console_finalize is not None:
                console_finalize()

        return log_step, finalize

    return setup
