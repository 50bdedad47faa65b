"""benchmarks/ablate.py: every variant is a valid config that differs from the base where it says,
and the script runs end to end on the demo data with a tiny budget."""
import json
import subprocess
import sys

import pytest
from spacy.util import load_config, load_model_from_config

from spacy_globalpointer.convert import read_jsonl, write_docbin

from .conftest import CONFIGS, REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "ablate.py"


ablate = load_benchmark("ablate")


# Variants that change nothing in cpu.cfg (head_size 32, SoftLexicon, one attention layer,
# parameter averaging and the span grid are already there) are checked on cpu_en.cfg, which has
# none of them.
BASE_CONFIGS = {
    name: "cpu_en.cfg"
    for name in ("head_size_32", "soft_lexicon", "cnn_attention_1", "soft_lexicon_attention_1", "averages", "span_grid")
}


@pytest.mark.parametrize("name", list(ablate.VARIANTS))
def test_each_variant_builds_a_pipeline_and_changes_only_its_part(name):
    base_name = BASE_CONFIGS.get(name, "cpu.cfg")
    base = load_config(CONFIGS / base_name, interpolate=False)
    config = ablate.make_variant(base, name, init_tok2vec=REPO / "pretrain" / "model9.bin")
    if name == "pretrained_tok2vec":
        assert config["paths"]["init_tok2vec"] == str(REPO / "pretrain" / "model9.bin")
        with pytest.raises(ValueError, match="needs --init-tok2vec"):
            ablate.make_variant(base, name)
    else:
        assert config["paths"] == base["paths"]
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.pipe_names == ["tok2vec", "global_pointer"]
    changed = {
        section for section in ("components", "training", "nlp", "corpora") if config[section] != base[section]
    }
    training_only = name.startswith(("lr_", "dropout_")) or name in ("averages", "no_averages")
    assert changed == (set() if name in ("recommended", "pretrained_tok2vec") else {"training"} if training_only else {"components"})
    # The base config is not touched by building a variant.
    assert base == load_config(CONFIGS / base_name, interpolate=False)


def test_a_variant_that_changes_nothing_is_refused():
    with pytest.raises(ValueError, match="'head_size_32' .* changes nothing"):
        ablate.make_variant(load_config(CONFIGS / "cpu.cfg", interpolate=False), "head_size_32")


def test_a_combined_variant_applies_its_parts_in_order():
    base = load_config(CONFIGS / "cpu_en.cfg", interpolate=False)
    config = ablate.make_variant(base, "cnn_attention_1+averages")
    assert config["components"]["tok2vec"] == ablate.make_variant(base, "cnn_attention_1")["components"]["tok2vec"]
    assert config["training"]["optimizer"]["use_averages"] is True
    assert config["training"]["dropout"] == base["training"]["dropout"]
    assert ablate.describe("cnn_attention_1+averages").startswith("the CNN plus 1 self-attention layer")
    with pytest.raises(ValueError, match="'averages' .* changes nothing"):
        ablate.make_variant(base, "averages+averages")


def test_no_bigrams_is_spacy_multihashembed():
    config = ablate.make_variant(load_config(CONFIGS / "cpu.cfg", interpolate=False), "no_bigrams")
    embed = config["components"]["tok2vec"]["model"]["embed"]
    assert embed["@architectures"] == ablate.SOFT_LEXICON  # the lexicon stays; what it wraps changes
    assert embed["embed"]["@architectures"] == "spacy.MultiHashEmbed.v2"
    assert not any(key.startswith("ngram") for key in embed["embed"])


def test_the_shipped_config_ablates_back_to_the_cnn_of_cpu_en():
    """no_soft_lexicon, no_attention and no_averages undo what cpu.cfg adds to cpu_en.cfg's model."""
    config = ablate.make_variant(
        load_config(CONFIGS / "cpu.cfg", interpolate=False), "no_soft_lexicon+no_attention+no_averages"
    )
    english = load_config(CONFIGS / "cpu_en.cfg", interpolate=False)
    assert config["components"]["tok2vec"]["model"]["encode"] == english["components"]["tok2vec"]["model"]["encode"]
    assert config["components"]["tok2vec"]["model"]["embed"]["@architectures"] == "spacy-globalpointer.NgramHashEmbed.v1"
    assert config["training"]["optimizer"] == english["training"]["optimizer"]
    for name in ("soft_lexicon", "cnn_attention_1", "averages"):
        with pytest.raises(ValueError, match=f"'{name}' .* changes nothing"):
            ablate.make_variant(load_config(CONFIGS / "cpu.cfg", interpolate=False), name)


def test_ablate_end_to_end_on_demo_data(tmp_path):
    for split, n in (("train", 60), ("dev", 20)):
        docs, report = read_jsonl(REPO / "assets" / "demo" / f"{split}.jsonl", "zh")
        report.raise_if(0)
        write_docbin(docs[:n], tmp_path / f"{split}.spacy")
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--train", str(tmp_path / "train.spacy"), "--dev",
           str(tmp_path / "dev.spacy"), "--config", str(CONFIGS / "cpu.cfg"), "--out", str(out),
           "--variants", "recommended,no_bigrams", "--max-steps", "4", "--eval-frequency", "2",
           "--repeats", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    summary = json.loads((out / "ablations.json").read_text(encoding="utf8"))
    assert [row["variant"] for row in summary["variants"]] == ["recommended", "no_bigrams"]
    for row in summary["variants"]:
        assert row["status"] == "ok"
        assert 0.0 <= row["best_f"] <= 1.0 and row["best_step"] in (0, 2, 4)
        assert row["infer_words_per_second"] > 0 and 0.0 < row["head_share_of_inference"] < 1.0
        assert (out / "configs" / f"{row['variant']}.cfg").exists()
        assert (out / row["variant"] / "compare.json").exists()
    # The variants share one prepared corpus.
    assert (out / "corpus" / "prepared.json").is_file() and not (out / "no_bigrams" / "corpus").exists()
    table = (out / "ablations.md").read_text(encoding="utf8")
    assert "| recommended |" in table and "| no_bigrams |" in table
    # The bigram tables make the recommended model larger on disk than the one without.
    sizes = {row["variant"]: row["model_mb"] for row in summary["variants"]}
    assert sizes["recommended"] > sizes["no_bigrams"]


def test_table_has_test_columns_when_a_variant_was_tested():
    rows = [
        {"variant": "recommended", "change": "c", "status": "ok", "best_f": 0.7, "best_p": 0.8, "best_r": 0.6,
         "best_step": 500, "minutes_to_best": 1.0, "train_words_per_second": 10.0, "infer_words_per_second": 20.0,
         "head_share_of_inference": 0.1, "model_mb": 1.0, "test_f": 0.65, "test_nested_r": 0.4, "test_flat_r": 0.8},
        {"variant": "bilstm", "change": "d", "status": "failed"},
    ]
    table = ablate.format_markdown(rows, {"config": "c.cfg", "max_steps": 10, "eval_frequency": 5})
    header, _, tested, failed = table.splitlines()[:4]
    assert header.endswith("test F | nested / flat recall (test) |")
    assert tested.endswith("| 65.00 | 0.500 |") and failed.count("|") == header.count("|")
    untested = ablate.format_markdown(rows[1:], {"config": "c.cfg", "max_steps": 10, "eval_frequency": 5})
    assert "test F" not in untested


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        ablate.main(["--out", str(tmp_path), "--variants", "recommended,nope"])
    with pytest.raises(SystemExit, match="unknown"):
        ablate.main(["--out", str(tmp_path), "--variants", "cnn_deep+nope"])
