"""Ablations of the CPU config: global_pointer alone, trained on variants of one base config.

    python benchmarks/ablate.py --train corpus/cluener/train.spacy --dev corpus/cluener/dev.spacy \
        --config configs/cpu.cfg --out results/ablations/cluener \
        [--variants recommended,no_bigrams,head_size_64,...] [--max-steps 2000] [--eval-frequency 250] \
        [any other benchmarks/compare.py option, e.g. --limit-train N --repeats 1]

Each variant changes one thing in the base config (`VARIANTS` below says what); `A+B` applies
variant A, then B, and is named so in the table (`cnn_attention_1+averages`). Its config is
written to OUT/configs/NAME.cfg and trained and timed by `compare.py --systems global_pointer`
into OUT/NAME, with the same seed, step budget and data as every other variant. Writes
OUT/ablations.json and OUT/ablations.md: best dev P/R/F, step and minutes to the best, training
and inference words/s, the global_pointer component's share of inference time, model size.
"""
import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import compare  # benchmarks/compare.py; this script's folder is first on sys.path

Config = Dict[str, Any]


SOFT_LEXICON = "spacy-globalpointer.SoftLexiconEmbed.v1"


def _embed(config: Config) -> Config:
    return config["components"]["tok2vec"]["model"]["embed"]


def _hash_embed(config: Config) -> Config:
    """The hashed token embedding: the embed itself, or the one SoftLexicon wraps."""
    embed = _embed(config)
    return embed["embed"] if embed.get("@architectures") == SOFT_LEXICON else embed


def _encode(config: Config) -> Config:
    return config["components"]["tok2vec"]["model"]["encode"]


def _gp_model(config: Config) -> Config:
    return config["components"][compare._find_global_pointer(config)]["model"]


def no_ngrams(config: Config) -> None:
    embed = _hash_embed(config)
    if embed.get("@architectures") != "spacy-globalpointer.NgramHashEmbed.v1":
        raise ValueError("no_bigrams needs a base config whose embed is NgramHashEmbed.v1")
    embed.update({"@architectures": "spacy.MultiHashEmbed.v2", "include_static_vectors": False})
    for key in ("ngram_attr", "ngram_sizes", "ngram_rows"):
        embed.pop(key, None)


def setter(getter: Callable[[Config], Config], **values: Any) -> Callable[[Config], None]:
    def apply(config: Config) -> None:
        getter(config).update(values)

    return apply


def bilstm(config: Config) -> None:
    encode = _encode(config)
    encode.clear()
    encode.update({"@architectures": "spacy.TorchBiLSTMEncoder.v1", "width": 128, "depth": 2, "dropout": 0.0})


def character_embed(config: Config) -> None:
    """spaCy's CharacterEmbed.v2: the first and last 4 characters of each word, plus its NORM."""
    embed = _hash_embed(config)
    width = embed.get("width", _encode(config).get("width", 96))
    embed.clear()
    embed.update({
        "@architectures": "spacy.CharacterEmbed.v2", "width": width, "rows": 7000, "nM": 64, "nC": 8,
        "include_static_vectors": False,
    })


def no_attention(config: Config) -> None:
    """The CNN alone: CNNAttentionEncoder.v1 back to spaCy's MaxoutWindowEncoder.v2."""
    encode = _encode(config)
    if encode.get("@architectures") == "spacy-globalpointer.CNNAttentionEncoder.v1":
        for key in ("attention_depth", "attention_heads", "attention_window"):
            encode.pop(key, None)
        encode["@architectures"] = "spacy.MaxoutWindowEncoder.v2"


def attention(depth: int) -> Callable[[Config], None]:
    """The base CNN plus `depth` local self-attention layers (spacy-globalpointer.CNNAttentionEncoder.v1)."""

    def apply(config: Config) -> None:
        encode = _encode(config)
        encode.update({
            "@architectures": "spacy-globalpointer.CNNAttentionEncoder.v1",
            "attention_depth": depth, "attention_heads": 4, "attention_window": 64,
        })

    return apply


def training(**values: Any) -> Callable[[Config], None]:
    return setter(lambda config: config["training"]["optimizer"], **values)


def dropout(rate: float) -> Callable[[Config], None]:
    return setter(lambda config: config["training"], dropout=rate)


def both(*changes: Callable[[Config], None]) -> Callable[[Config], None]:
    """The changes applied one after the other."""

    def apply(config: Config) -> None:
        for change in changes:
            change(config)

    return apply


def soft_lexicon(config: Config) -> None:
    """SoftLexicon (Ma et al. 2020): jieba's dictionary words each token begins, continues, ends or is,
    four set vectors of 32 concatenated to the base embedding (spacy-globalpointer.SoftLexiconEmbed.v1)."""
    tok2vec = config["components"]["tok2vec"]["model"]
    if tok2vec["embed"].get("@architectures") == SOFT_LEXICON:
        return  # already there: make_variant refuses a variant that changes nothing
    base = copy.deepcopy(tok2vec["embed"])
    tok2vec["embed"] = {
        "@architectures": SOFT_LEXICON,
        "width": base.get("width", _encode(config).get("width", 96)),
        "lexicon_width": 32, "lexicon_rows": 50000, "max_word_length": 8, "weighting": "log",
        "embed": base, "lexicon": {"@misc": "spacy-globalpointer.jieba_lexicon.v1"},
    }


def no_soft_lexicon(config: Config) -> None:
    """The embedding SoftLexicon wraps, alone."""
    tok2vec = config["components"]["tok2vec"]["model"]
    tok2vec["embed"] = copy.deepcopy(_hash_embed(config))


def _gp_component(config: Config) -> Config:
    return config["components"][compare._find_global_pointer(config)]


def pretrained_tok2vec(config: Config) -> None:
    """The tok2vec starts from `spacy pretrain` weights: make_variant sets paths.init_tok2vec."""
    if not config["paths"].get("init_tok2vec"):
        raise ValueError("variant 'pretrained_tok2vec' needs --init-tok2vec PATH (a modelN.bin written by spacy pretrain)")


# name -> (what changes against the base config, how)
VARIANTS: Dict[str, Tuple[str, Callable[[Config], None]]] = {
    "recommended": ("the base config unchanged", lambda config: None),
    "no_bigrams": ("spaCy's MultiHashEmbed: no character bigrams", no_ngrams),
    "bigrams_trigrams": ("n-grams of 2 and 3 tokens", setter(_hash_embed, ngram_sizes=[2, 3])),
    "head_size_64": ("head_size 64", setter(_gp_model, head_size=64)),
    "no_rope": ("no rotary position embedding", setter(_gp_model, rope=False)),
    "efficient": (
        "Efficient GlobalPointer head",
        setter(_gp_model, **{"@architectures": "spacy-globalpointer.EfficientGlobalPointer.v1"}),
    ),
    "cnn_wide": ("MaxoutWindowEncoder width 256", setter(_encode, width=256)),
    "cnn_deep": ("MaxoutWindowEncoder depth 8", setter(_encode, depth=8)),
    "cnn_window_2": ("MaxoutWindowEncoder window_size 2 (8 tokens each side at depth 4)", setter(_encode, window_size=2)),
    "cnn_window_3": ("MaxoutWindowEncoder window_size 3 (12 tokens each side at depth 4)", setter(_encode, window_size=3)),
    "char_embed": ("spaCy's CharacterEmbed.v2 (nM 64, nC 8) instead of MultiHashEmbed", character_embed),
    "head_size_32": ("head_size 32", setter(_gp_model, head_size=32)),
    "cnn_attention_1": ("the CNN plus 1 self-attention layer (RoPE, 4 heads, window 64)", attention(1)),
    "cnn_attention_2": ("the CNN plus 2 self-attention layers (RoPE, 4 heads, window 64)", attention(2)),
    "no_attention": ("the CNN alone, without its self-attention layers", no_attention),
    "bilstm": ("TorchBiLSTMEncoder width 128, depth 2", bilstm),
    "lr_2e-3": ("learn_rate 0.002", training(learn_rate=0.002)),
    "lr_warmup_linear": (
        "learn_rate schedule: 500 warm-up steps to 0.002, linear decay to 0 at training.max_steps",
        training(learn_rate={"@schedules": "warmup_linear.v1", "warmup_steps": 500,
                             "total_steps": "${training.max_steps}", "initial_rate": 0.002}),
    ),
    "averages": (
        "parameter averaging (optimizer use_averages: the averaged weights are evaluated and saved)",
        training(use_averages=True),
    ),
    "no_averages": ("no parameter averaging (optimizer use_averages false)", training(use_averages=False)),
    "dropout_0.2": ("training dropout 0.2", dropout(0.2)),
    "dropout_0.3": ("training dropout 0.3", dropout(0.3)),
    "soft_lexicon": ("SoftLexicon: jieba dictionary words (B/M/E/S sets, 4 x 32) added to the embedding", soft_lexicon),
    "no_soft_lexicon": ("without SoftLexicon: the hashed embedding alone", no_soft_lexicon),
    "soft_lexicon_attention_1": (
        "SoftLexicon and 1 self-attention layer",
        both(soft_lexicon, attention(1)),
    ),
    "pretrained_tok2vec": ("tok2vec initialised from spacy pretrain weights (--init-tok2vec)", pretrained_tok2vec),
    "span_evidence": (
        "span-internal evidence in the head (mean and soft minimum of per-type token scores)",
        setter(_gp_model, span_evidence=True),
    ),
    "span_grid": (
        "span grid in the head: 8 RoPE q.k channels (head size 16) and the head's probabilities, 2 residual "
        "3x3 convolutions over (start, end), a score per type",
        setter(_gp_model, span_grid={"channels": 8, "depth": 2, "kernel": 3, "head_size": 16}),
    ),
    "no_span_grid": ("the head without its span grid (configs/cpu.cfg has one)", setter(_gp_model, span_grid=None)),
    "boundary_smoothing": (
        "boundary smoothing: epsilon 0.2 shared among the spans 1 boundary step away",
        setter(_gp_component, boundary_smoothing=0.2, boundary_distance=1),
    ),
    "cnn_attention_1_span_evidence": (
        "1 self-attention layer and span-internal evidence in the head",
        both(attention(1), setter(_gp_model, span_evidence=True)),
    ),
}


def parts(name: str) -> List[str]:
    """The variants that `name` applies in order: `A+B` is A, then B."""
    return [part.strip() for part in name.split("+")]


def describe(name: str) -> str:
    return " + ".join(VARIANTS[part][0] for part in parts(name))


def make_variant(base: Config, name: str, *, init_tok2vec: Optional[Path] = None) -> Config:
    """`base` with variant `name` applied (`A+B`: A, then B); ValueError if a part changes
    nothing (e.g. head_size_32 on a base whose head_size is already 32), so that no run is a
    silent copy of another. `init_tok2vec` is the weights file of the pretrained_tok2vec variant."""
    config = copy.deepcopy(base)
    for part in parts(name):
        before = copy.deepcopy(config)
        if part == "pretrained_tok2vec" and init_tok2vec is not None:
            config["paths"]["init_tok2vec"] = str(Path(init_tok2vec).resolve())
        VARIANTS[part][1](config)
        if part != "recommended" and config == before:
            raise ValueError(f"variant {part!r} ({VARIANTS[part][0]}) changes nothing in this base config")
    return config


def summarize(name: str, report: Dict[str, Any]) -> Dict[str, Any]:
    result = report["systems"]["global_pointer"]
    row: Dict[str, Any] = {"variant": name, "change": describe(name), "status": result.get("status")}
    if result.get("status") != "ok":
        return row
    inference = result["inference"]
    component = inference["components"].get(result["component"], {})
    row.update({
        "best_f": result["best"]["f"], "best_p": result["best"]["p"], "best_r": result["best"]["r"],
        "best_step": result["best"]["step"], "minutes_to_best": result["best"]["minutes"],
        "train_words_per_second": result["train"].get("words_per_second"),
        "infer_words_per_second": inference["words_per_second"],
        "head_share_of_inference": component.get("share"), "model_mb": result["model_mb"],
    })
    tested = (result.get("test") or {}).get("all_gold")
    if tested:  # compare.py --test: model-best scored once on the test set
        kinds = tested.get("recall_by_kind") or {}
        row.update({"test_f": tested["f"], "test_nested_r": kinds.get("nested"), "test_flat_r": kinds.get("flat")})
    return row


def format_markdown(rows: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
    def fmt(value: Optional[float], spec: str, scale: float = 1.0) -> str:
        return "-" if value is None else format(value * scale, spec)

    tested = any("test_f" in row for row in rows)
    lines = [
        "| variant | change | best F | P | R | step of best | min to best | train words/s "
        "| infer words/s | global_pointer share of inference | model MB |"
        + (" test F | nested / flat recall (test) |" if tested else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if tested else ""),
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | {row['change']} | failed | | | | | | | | |" + (" | |" if tested else ""))
            continue
        line = (
            f"| {row['variant']} | {row['change']} | {fmt(row['best_f'], '.2f', 100)} "
            f"| {fmt(row['best_p'], '.2f', 100)} | {fmt(row['best_r'], '.2f', 100)} | {row['best_step']} "
            f"| {fmt(row['minutes_to_best'], '.2f')} | {fmt(row['train_words_per_second'], '.0f')} "
            f"| {fmt(row['infer_words_per_second'], '.0f')} | {fmt(row['head_share_of_inference'], '.1f', 100)}% "
            f"| {fmt(row['model_mb'], '.1f')} |"
        )
        if tested:
            nested, flat = row.get("test_nested_r"), row.get("test_flat_r")
            ratio = nested / flat if nested is not None and flat else None
            line += f" {fmt(row.get('test_f'), '.2f', 100)} | {fmt(ratio, '.3f')} |"
        lines.append(line)
    lines.append("")
    lines.append(
        f"Base config {settings['config']}; {settings['max_steps']} steps, evaluation every "
        f"{settings['eval_frequency']}, global_pointer only, one variant after the other."
    )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=compare.REPO / "configs" / "cpu.cfg")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {','.join(VARIANTS)}; A+B combines two")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--eval-frequency", type=int, default=250)
    parser.add_argument("--init-tok2vec", type=Path, help="spacy pretrain weights (modelN.bin) for pretrained_tok2vec")
    args, passthrough = parser.parse_known_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [part for name in names for part in parts(name) if part not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"--variants: unknown {unknown or 'empty list'}; choose from {', '.join(VARIANTS)}")
    from spacy.util import load_config

    base = load_config(args.config, interpolate=False)
    (args.out / "configs").mkdir(parents=True, exist_ok=True)
    # One prepared corpus for every variant: preparing it again per variant took minutes on GENIA.
    corpus = [] if "--corpus" in passthrough else ["--corpus", str(args.out / "corpus")]
    rows = []
    for name in names:
        config_path = args.out / "configs" / f"{name}.cfg"
        make_variant(base, name, init_tok2vec=args.init_tok2vec).to_disk(config_path)
        print(f"== {name}: {describe(name)}", flush=True)
        compare.main([
            "--config", str(config_path), "--out", str(args.out / name), "--systems", "global_pointer",
            "--max-steps", str(args.max_steps), "--eval-frequency", str(args.eval_frequency),
        ] + corpus + passthrough)
        report = json.loads((args.out / name / "compare.json").read_text(encoding="utf8"))
        rows.append(summarize(name, report))
    settings = {"config": str(args.config), "max_steps": args.max_steps, "eval_frequency": args.eval_frequency,
                "passthrough": passthrough}
    (args.out / "ablations.json").write_text(
        json.dumps({"settings": settings, "variants": rows}, indent=2), encoding="utf8"
    )
    table = format_markdown(rows, settings)
    (args.out / "ablations.md").write_text(table, encoding="utf8")
    print(table)
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
