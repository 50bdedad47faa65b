"""The configs of benchmarks/compare.py: each system's task component, on a copy of the base
config's tok2vec, in place of the base config's global_pointer, and the config `spacy train` runs
for it (data, budget, seed, score weights, logger)."""
import copy
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOGGER_CODE = HERE / "jsonl_logger.py"
SYSTEMS = ("global_pointer", "efficient_global_pointer", "ner", "spancat", "span_finder")
GP_ARCHITECTURES = {
    "global_pointer": "spacy-globalpointer.GlobalPointer.v1",
    "efficient_global_pointer": "spacy-globalpointer.EfficientGlobalPointer.v1",
}
# span_finder's threshold while training; the inference pass also sweeps SPAN_FINDER_SWEEP on dev.
SPAN_FINDER_THRESHOLD = 0.2
SPAN_FINDER_SWEEP = (0.05, 0.1, 0.2, 0.3, 0.5)


def _find_global_pointer(config) -> str:
    names = [name for name, block in config["components"].items() if block.get("factory") == "global_pointer"]
    if len(names) != 1:
        raise ValueError(
            f"the base config needs exactly one component with factory = \"global_pointer\" "
            f"(found {names or 'none'}); its tok2vec sub-block is given to every system"
        )
    return names[0]


def task_component(
    system: str, base_gp: Dict[str, Any], *, spans_key: str, max_span_length: int
) -> Tuple[str, Dict[str, Any]]:
    """(component name, config block) of a system's task component. Every block gets a copy of
    the base global_pointer's `model.tok2vec` block (in the shipped configs, a Tok2VecListener)."""
    tok2vec = copy.deepcopy(base_gp["model"]["tok2vec"])
    if system in GP_ARCHITECTURES:
        block = copy.deepcopy(base_gp)
        block["spans_key"] = spans_key
        block["model"]["@architectures"] = GP_ARCHITECTURES[system]
        return "", block  # the name is the base config's
    if system == "ner":
        # As `spacy init config --pipeline tok2vec,ner` writes it.
        return "ner", {
            "factory": "ner",
            "incorrect_spans_key": None,
            "moves": None,
            "update_with_oracle_cut_size": 100,
            "scorer": {"@scorers": "spacy.ner_scorer.v1"},
            "model": {
                "@architectures": "spacy.TransitionBasedParser.v2",
                "state_type": "ner",
                "extra_state_tokens": False,
                "hidden_width": 64,
                "maxout_pieces": 2,
                "use_upper": True,
                "nO": None,
                "tok2vec": tok2vec,
            },
        }
    if system in ("spancat", "span_finder"):
        # As `spacy init config --pipeline tok2vec,spancat` writes it, with a range suggester
        # that reaches the long gold spans (span_finder: the candidates span_finder writes).
        return "spancat", {
            "factory": "spancat",
            "max_positive": None,
            "spans_key": spans_key,
            "threshold": 0.5,
            "scorer": {"@scorers": "spacy.spancat_scorer.v1"},
            "model": {
                "@architectures": "spacy.SpanCategorizer.v1",
                "reducer": {"@layers": "spacy.mean_max_reducer.v1", "hidden_size": 128},
                "scorer": {"@layers": "spacy.LinearLogistic.v1", "nO": None, "nI": None},
                "tok2vec": tok2vec,
            },
            "suggester": (
                {"@misc": "spacy.preset_spans_suggester.v1", "spans_key": spans_key}
                if system == "span_finder"
                else {"@misc": "spacy.ngram_range_suggester.v1", "min_size": 1, "max_size": max_span_length}
            ),
        }
    raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")


def span_finder_component(tok2vec: Dict[str, Any], *, spans_key: str, max_length: int) -> Dict[str, Any]:
    """spaCy's span_finder as the quickstart writes it: it learns span starts and ends from the
    gold under `spans_key` and writes candidates there, which spancat's preset suggester reads
    (spancat then overwrites them with its own predictions)."""
    return {
        "factory": "span_finder",
        "spans_key": spans_key,
        "threshold": SPAN_FINDER_THRESHOLD,
        "max_length": max_length,
        "min_length": None,
        "scorer": {"@scorers": "spacy.span_finder_scorer.v1"},
        "model": {
            "@architectures": "spacy.SpanFinder.v1",
            "scorer": {"@layers": "spacy.LinearLogistic.v1", "nO": 2},
            "tok2vec": copy.deepcopy(tok2vec),
        },
    }


def score_weights(system: str, spans_key: str) -> Dict[str, Optional[float]]:
    """model-best is picked by the system's own F."""
    if system == "ner":
        return {"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None}
    return {f"spans_{spans_key}_f": 1.0, f"spans_{spans_key}_p": 0.0, f"spans_{spans_key}_r": 0.0}


def score_prefix(system: str, spans_key: str) -> str:
    return "ents" if system == "ner" else f"spans_{spans_key}"


def build_config(
    base,
    system: str,
    *,
    train: str,
    dev: str,
    spans_key: str,
    max_span_length: int,
    max_steps: int,
    eval_frequency: int,
    seed: Optional[int],
    log_path: str,
    patience: Optional[int] = None,
    gold_tokens: bool = False,
):
    """The config `spacy train` runs for one system: `base` with its global_pointer swapped for
    the system's component, and the data, budget, score weights and logger set."""
    config = copy.deepcopy(base)
    gp_name = _find_global_pointer(config)
    name, block = task_component(
        system, config["components"][gp_name], spans_key=spans_key, max_span_length=max_span_length
    )
    name = name or gp_name
    tok2vec = copy.deepcopy(config["components"][gp_name]["model"]["tok2vec"])
    del config["components"][gp_name]
    config["components"][name] = block
    pipeline = [name if pipe == gp_name else pipe for pipe in config["nlp"]["pipeline"]]
    if system == "span_finder":
        config["components"]["span_finder"] = span_finder_component(
            tok2vec, spans_key=spans_key, max_length=max_span_length
        )
        pipeline.insert(pipeline.index(name), "span_finder")
        config["training"]["annotating_components"] = ["span_finder"]
    config["nlp"]["pipeline"] = pipeline
    init_components = config.get("initialize", {}).get("components", {})
    if name != gp_name and gp_name in init_components:
        del init_components[gp_name]
    config["paths"]["train"] = train
    config["paths"]["dev"] = dev
    if seed is not None:
        config["system"]["seed"] = seed
    config["training"]["max_steps"] = max_steps
    config["training"]["eval_frequency"] = eval_frequency
    if patience is not None:
        config["training"]["patience"] = patience
    if gold_tokens:
        for corpus in ("train", "dev"):
            config["corpora"][corpus]["gold_preproc"] = True
    config["training"]["score_weights"] = score_weights(system, spans_key)
    config["training"]["logger"] = {
        "@loggers": "spacy-globalpointer.JSONLLogger.v1",
        "path": log_path,
        "console": True,
    }
    return config
