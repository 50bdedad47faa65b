"""Step profile: where a training step's and an inference batch's time goes.

Runs spaCy's own training loop (`spacy.training.loop.train`, what `spacy train` runs) on a config
for `--steps` updates, evaluating every `--eval-frequency`, then `nlp.pipe` over the dev texts for
`--infer-batches` batches of `--batch-size`, with every stage of interest timed:

- `trf: tokenize+align`: spacy-transformers' model outside the torch module (wordpiece
  tokenization, strided spans, alignment, batching and their backward);
- `trf: torch forward` / `trf: torch backward`: the transformer itself;
- `trf: component`: the transformer component's own work (listener hand-off);
- `listener pooling` (forward and backward): wordpieces to tokens (spacy-transformers);
- `gp: model` (forward and backward): global_pointer's length groups and padding;
- `gp: head forward` / `gp: head backward`: the torch head;
- `gp: targets+loss`: gold targets and the multi-label cross-entropy (`get_loss`);
- `gp: update`: the rest of global_pointer's update (checks);
- `optimizer`: `finish_update` of every component;
- `gp: decode+set_annotations`, `gp: predict`, `tokenizer`, `evaluate`, `scorer`;
- `corpus reading`: spaCy's Corpus turning the DocBin into Examples (in initialization, the
  training loop and evaluation), `gp: initialize`, `trf: initialize`.

Times are exclusive (a stage's nested stages are not counted in it). On a GPU (`--gpu-id 0`),
`torch.cuda.synchronize()` runs before each reading, so that a stage is charged for the GPU work it
launched. The report gives the time to the first step and to the first evaluation (from the start of
the script, imports included), the first step apart from the steady state (the steps after it), and
the share of the project's own code (global_pointer: model, head, targets and loss, update checks,
decoding) in a training step and in an inference batch.

    python benchmarks/step_profile.py configs/gpu_trf.cfg --train corpus/cluener/train.spacy \\
        --dev corpus/cluener/dev.spacy --model /path/to/bert --steps 20 --infer-batches 10 \\
        --out results/step_profile/cpu [--gpu-id 0] [--components.transformer.model.mixed_precision false]

writes `step_profile.json` and `step_profile.md` into `--out`.
"""
import time

START = time.perf_counter()

import argparse  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

# The project's own code, for the share targets.
PROJECT_TRAIN = ("gp: model", "gp: head forward", "gp: head backward", "gp: targets+loss", "gp: update")
PROJECT_INFER = ("gp: model", "gp: head forward", "gp: predict", "gp: decode+set_annotations")


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--train", type=Path, required=True, help="training DocBin")
    parser.add_argument("--dev", type=Path, required=True, help="dev DocBin (evaluation and inference)")
    parser.add_argument("--model", help="the transformer: a hub name or a folder (components.transformer.model.name)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-frequency", type=int, default=10)
    parser.add_argument("--infer-batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="nlp.pipe batch size for inference")
    parser.add_argument("--gpu-id", type=int, default=-1)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for i in range(0, len(rest), 2):
        if not rest[i].startswith("--") or i + 1 >= len(rest):
            parser.error(f"config overrides come as --section.key value pairs, got {rest[i:i + 2]}")
        overrides[rest[i][2:]] = rest[i + 1]
    return args, overrides


class Profile:
    """Nested timed stages. Each call of a stage records (phase, step, name, seconds,
    exclusive seconds); the phase is the outermost stage's ("train", "evaluate", "infer")."""

    def __init__(self, synchronize: Callable[[], None]):
        self.synchronize = synchronize
        self.stack: List[List[Any]] = []  # [name, start, seconds of children]
        self.records: List[Dict[str, Any]] = []
        self.step = -1
        self.phase = "setup"
        self.marks: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        self.synchronize()
        self.stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            self.synchronize()
            stage_name, start, children = self.stack.pop()
            seconds = time.perf_counter() - start
            if self.stack:
                self.stack[-1][2] += seconds
            self.records.append({"phase": self.phase, "step": self.step, "name": stage_name,
                                 "seconds": seconds, "exclusive": seconds - children})

    def mark(self, name: str) -> None:
        """The first time something happened, in seconds since the script started."""
        if name not in self.marks:
            self.synchronize()
            self.marks[name] = time.perf_counter() - START


def timed_method(profile: Profile, cls: type, method: str, name: str, before: Optional[Callable] = None,
                 after: Optional[Callable] = None) -> None:
    original = getattr(cls, method)

    @functools.wraps(original)  # spaCy reads initialize()'s signature
    def wrapper(self, *args, **kwargs):
        if before:
            before()
        with profile.stage(name):
            result = original(self, *args, **kwargs)
        if after:
            after()
        return result

    setattr(cls, method, wrapper)


def timed_model(profile: Profile, model, forward_name: str, backward_name: str) -> None:
    """Time a Thinc model's forward pass and the backprop callback it returns."""
    original = model._func

    def forward(model_, X, is_train):
        with profile.stage(forward_name):
            Y, backprop = original(model_, X, is_train)

        def timed_backprop(dY):
            with profile.stage(backward_name):
                return backprop(dY)

        return Y, timed_backprop

    model._func = forward


def timed_generator(profile: Profile, cls: type, method: str, name: str) -> None:
    """Time each item a generator method yields (reading a corpus is lazy)."""
    original = getattr(cls, method)

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        items = iter(original(self, *args, **kwargs))
        while True:
            with profile.stage(name):
                item = next(items, StopIteration)
            if item is StopIteration:
                return
            yield item

    setattr(cls, method, wrapper)


def instrument_initialization(profile: Profile) -> None:
    """Before the pipeline exists: its components' initialize and every read of a corpus."""
    from spacy.training.corpus import Corpus

    from spacy_globalpointer.pipe import GlobalPointer

    timed_generator(profile, Corpus, "__call__", "corpus reading")
    timed_method(profile, GlobalPointer, "initialize", "gp: initialize")
    try:
        from spacy_transformers import Transformer
    except ImportError:
        return
    timed_method(profile, Transformer, "initialize", "trf: initialize")


def instrument(nlp, profile: Profile) -> None:
    """Wrap the stages of a transformer (or tok2vec) + global_pointer pipeline."""
    from spacy.language import Language
    from spacy.scorer import Scorer

    from spacy_globalpointer.pipe import GlobalPointer

    gp_name = next(name for name, proc in nlp.pipeline if isinstance(proc, GlobalPointer))
    gp = nlp.get_pipe(gp_name)

    def start_step():
        profile.step += 1
        profile.phase = "train"

    def end_step():
        profile.mark("first step")

    timed_method(profile, Language, "update", "step", before=start_step, after=end_step)
    timed_method(profile, Language, "evaluate", "evaluate", before=lambda: setattr(profile, "phase", "evaluate"),
                 after=lambda: profile.mark("first evaluation"))
    timed_method(profile, Language, "make_doc", "tokenizer")
    timed_method(profile, Scorer, "score", "scorer")
    timed_method(profile, GlobalPointer, "get_loss", "gp: targets+loss")
    timed_method(profile, GlobalPointer, "update", "gp: update")
    timed_method(profile, GlobalPointer, "predict", "gp: predict")
    timed_method(profile, GlobalPointer, "set_annotations", "gp: decode+set_annotations")
    for name, proc in nlp.pipeline:
        if hasattr(proc, "finish_update") and type(proc).finish_update is not GlobalPointer.finish_update:
            timed_method(profile, type(proc), "finish_update", "optimizer")
    timed_method(profile, GlobalPointer, "finish_update", "optimizer")
    timed_model(profile, gp.model, "gp: model", "gp: model")
    timed_model(profile, gp.model.get_ref("head"), "gp: head forward", "gp: head backward")
    tok2vec = gp.model.get_ref("tok2vec")
    if "transformer" in nlp.pipe_names:
        from spacy_transformers import Transformer

        trf = nlp.get_pipe("transformer")
        timed_method(profile, Transformer, "update", "trf: component")
        timed_method(profile, Transformer, "predict", "trf: component")
        timed_model(profile, trf.model, "trf: tokenize+align", "trf: tokenize+align")
        timed_model(profile, trf.model.layers[0], "trf: torch forward", "trf: torch backward")
        timed_model(profile, tok2vec, "listener pooling", "listener pooling")
    else:
        timed_model(profile, tok2vec, "tok2vec (listener)", "tok2vec (listener)")
        for name, proc in nlp.pipeline:
            if name != gp_name and hasattr(proc, "model"):
                timed_model(profile, proc.model, f"{name} forward", f"{name} backward")


def summarize(profile: Profile, phase: str, steps: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Exclusive seconds per stage over the phase's units (train: steps; else the whole phase)."""
    records = [r for r in profile.records if r["phase"] == phase and (steps is None or r["step"] in steps)]
    totals: Dict[str, float] = defaultdict(float)
    for record in records:
        totals[record["name"]] += record["exclusive"]
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def shares(totals: Dict[str, float], project: Sequence[str], units: int) -> Dict[str, Any]:
    whole = sum(totals.values())
    return {
        "seconds": whole, "per_unit_s": whole / max(units, 1), "units": units,
        "stages": {name: {"seconds": s, "per_unit_s": s / max(units, 1), "share": s / whole if whole else 0.0}
                   for name, s in totals.items()},
        "project_share": sum(totals.get(name, 0.0) for name in project) / whole if whole else 0.0,
    }


def run(args: argparse.Namespace, overrides: Dict[str, str]) -> Dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import spacy
    import torch
    from spacy.tokens import DocBin
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import train
    from spacy.util import load_config

    import spacy_globalpointer  # noqa: F401

    try:
        import spacy_transformers  # noqa: F401  (imported here, so that its import counts as one)
    except ImportError:
        pass
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = args.gpu_id >= 0
    if on_gpu:
        spacy.require_gpu(args.gpu_id)
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    profile = Profile(synchronize)
    profile.marks["imports"] = time.perf_counter() - START
    settings = {
        "paths.train": str(args.train), "paths.dev": str(args.dev), "training.max_steps": str(args.steps),
        "training.eval_frequency": str(args.eval_frequency), **overrides,
    }
    if args.model:
        settings["components.transformer.model.name"] = args.model
    config = load_config(args.config, overrides={k: _value(v) for k, v in settings.items()}, interpolate=False)
    start = time.perf_counter()
    instrument_initialization(profile)
    profile.phase = "initialize"
    with profile.stage("initialize: the rest"):
        nlp = init_nlp(config, use_gpu=args.gpu_id)
    profile.marks["initialized"] = time.perf_counter() - START
    initialize_s = time.perf_counter() - start
    instrument(nlp, profile)
    # Until the first step, the loop reads and lists the training corpus.
    profile.phase = "loop"
    start = time.perf_counter()
    train(nlp, None, use_gpu=args.gpu_id, stdout=io.StringIO(), stderr=io.StringIO())
    train_wall = time.perf_counter() - start
    # Inference: nlp.pipe over the dev texts, as a user annotates.
    texts = [doc.text for doc in DocBin().from_disk(args.dev).get_docs(nlp.vocab)]
    texts = (texts * (1 + args.infer_batches * args.batch_size // max(len(texts), 1)))[: args.infer_batches * args.batch_size]
    profile.phase, profile.step = "infer", -1
    start = time.perf_counter()
    words = 0
    with profile.stage("infer"):
        for doc in nlp.pipe(texts, batch_size=args.batch_size):
            words += len(doc)
    synchronize()
    infer_wall = time.perf_counter() - start
    steps = sorted({r["step"] for r in profile.records if r["phase"] == "train"})
    # "step", "optimizer" (which the loop calls after each step), "evaluate" and the loop's own
    # reading of the corpus are never nested in one another: the rest is batching and logging.
    in_stages = sum(r["seconds"] for r in profile.records if r["name"] in ("step", "optimizer", "evaluate")
                    or (r["name"] == "corpus reading" and r["phase"] != "initialize" and r["phase"] != "evaluate"))
    evaluations = sum(1 for r in profile.records if r["name"] == "evaluate")
    report = {
        "command": "python benchmarks/step_profile.py " + " ".join(sys.argv[1:]),
        "config": str(args.config), "model": args.model, "gpu_id": args.gpu_id,
        "device": torch.cuda.get_device_name(args.gpu_id) if on_gpu else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "steps": len(steps), "evaluations": evaluations,
        "batch_size": args.batch_size, "infer_batches": args.infer_batches, "infer_words": words,
        "marks_s": profile.marks, "initialize_s": initialize_s, "train_wall_s": train_wall,
        "infer_wall_s": infer_wall, "infer_words_per_s": words / infer_wall if infer_wall else None,
        "initialization": shares(summarize(profile, "initialize"), ("gp: initialize",), 1),
        "corpus_reading_in_loop_s": sum(r["seconds"] for r in profile.records
                                        if r["name"] == "corpus reading" and r["phase"] != "initialize"),
        "first_step": shares(summarize(profile, "train", steps[:1]), PROJECT_TRAIN, 1),
        "steady_steps": shares(summarize(profile, "train", steps[1:]), PROJECT_TRAIN, len(steps) - 1),
        "evaluation": shares(summarize(profile, "evaluate"), PROJECT_INFER, evaluations),
        "inference": shares(summarize(profile, "infer"), PROJECT_INFER, args.infer_batches),
        "train_loop_other_s": train_wall - in_stages,
    }
    return report


def _value(text: str) -> Any:
    """A command-line override as spaCy reads it: JSON where it parses, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _table(title: str, part: Dict[str, Any], unit: str) -> List[str]:
    unit_one = {"steps": "step", "evaluations": "evaluation", "batches": "batch", "runs": "run"}[unit]
    lines = [f"**{title}** ({part['units']} {unit}, {part['per_unit_s'] * 1000:.1f} ms per {unit_one}; "
             f"project's own code {part['project_share'] * 100:.1f}%)", "",
             f"| stage | ms per {unit_one} | share |", "|---|---:|---:|"]
    for name, stage in part["stages"].items():
        lines.append(f"| {name} | {stage['per_unit_s'] * 1000:.2f} | {stage['share'] * 100:.1f}% |")
    return lines + [""]


def write_markdown(path: Path, report: Dict[str, Any]) -> None:
    marks = report["marks_s"]
    lines = [
        "# Step profile", "", f"Command: `{report['command']}`", "",
        f"Device: {report['device']} (gpu_id {report['gpu_id']}), torch threads {report['threads']}. "
        f"Times are exclusive: a stage's nested stages are not counted in it"
        + ("; torch.cuda.synchronize() before every reading." if report["gpu_id"] >= 0 else "."), "",
        "| milestone | seconds since the script started |", "|---|---:|",
    ]
    for name, seconds in marks.items():
        lines.append(f"| {name} | {seconds:.1f} |")
    lines += ["", f"Training loop: {report['train_wall_s']:.1f} s for {report['steps']} steps and "
              f"{report['evaluations']} evaluations; reading the corpus (DocBin to Examples) took "
              f"{report['corpus_reading_in_loop_s']:.2f} s of it and batching and logging {report['train_loop_other_s']:.2f} s. "
              "Inference: "
              f"{report['infer_words']} words in {report['infer_wall_s']:.2f} s "
              f"({report['infer_words_per_s']:.0f} words/s, batch size {report['batch_size']}).", ""]
    lines += _table("Initialization (`init_nlp`, what `spacy train` does before the first step)",
                    report["initialization"], "runs")
    lines += _table("First training step", report["first_step"], "steps")
    lines += _table("Training steps after the first", report["steady_steps"], "steps")
    lines += _table("Evaluation", report["evaluation"], "evaluations")
    lines += _table("Inference (nlp.pipe)", report["inference"], "batches")
    path.write_text("\n".join(lines) + "\n", encoding="utf8")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args, overrides = parse_args(argv)
    report = run(args, overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_profile.json").write_text(json.dumps(report, indent=2), encoding="utf8")
    write_markdown(args.out / "step_profile.md", report)
    print((args.out / "step_profile.md").read_text(encoding="utf8"))
    return report


if __name__ == "__main__":
    main()
