"""`spacy pretrain` of the CPU configs' tok2vec on text written by `raw-text`, and `spacy train`
starting from those weights (`paths.init_tok2vec`)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy
import spacy
from spacy.tokens import DocBin
from spacy.training.initialize import init_nlp
from spacy.util import load_config

from spacy_globalpointer.__main__ import main
from spacy_globalpointer.convert import write_raw_text

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["北京是中国的首都", "上海在东边", "北京是中国的首都", "", "广州很热", "深圳很新"]


def docbin(path: Path, texts) -> Path:
    nlp = spacy.blank("zh")
    DocBin(docs=[nlp.make_doc(text) for text in texts]).to_disk(path)
    return path


def test_raw_text_writes_each_text_once_and_leaves_out_the_excluded(tmp_path):
    train = docbin(tmp_path / "train.spacy", TEXTS)
    dev = docbin(tmp_path / "dev.spacy", ["深圳很新"])
    output = tmp_path / "raw" / "raw.jsonl"
    counts = write_raw_text([train, train], output, exclude=[dev])
    records = [json.loads(line) for line in output.read_text(encoding="utf8").splitlines()]
    assert records == [{"text": "北京是中国的首都"}, {"text": "上海在东边"}, {"text": "广州很热"}]
    assert counts == {"read": 12, "written": 3, "duplicates": 5, "excluded": 2, "empty": 2}


def test_raw_text_cli_names_a_missing_or_bad_input(tmp_path, capsys):
    not_docbin = tmp_path / "train.json"
    not_docbin.write_text('{"text": "x"}\n', encoding="utf8")
    assert main(["raw-text", str(tmp_path / "raw.jsonl"), str(tmp_path / "missing.spacy")]) == 2
    assert "missing.spacy: no such file" in capsys.readouterr().err
    assert main(["raw-text", str(tmp_path / "raw.jsonl"), str(not_docbin)]) == 2
    assert "train.json: not a .spacy DocBin" in capsys.readouterr().err


def _tok2vec_params(nlp) -> list:
    params = []
    for node in nlp.get_pipe("tok2vec").model.walk():
        params.extend(node.get_param(name).copy() for name in node.param_names if node.has_param(name))
    return params


def test_pretrained_tok2vec_is_what_training_starts_from(tmp_path):
    texts = [json.loads(line)["text"] for line in (ROOT / "assets" / "demo" / "train.jsonl").open(encoding="utf8")]
    raw = tmp_path / "raw.jsonl"
    write_raw_text([docbin(tmp_path / "train.spacy", texts[:200])], raw)
    out = tmp_path / "pretrain"
    config_path = ROOT / "configs" / "cpu.cfg"
    run = subprocess.run(
        [sys.executable, "-m", "spacy", "pretrain", str(config_path), str(out), "--paths.raw_text", str(raw),
         "--pretraining.max_epochs", "1"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    weights = out / "model0.bin"
    assert weights.is_file()
    train = tmp_path / "train_gold.spacy"
    assert main(["convert", "jsonl", str(ROOT / "assets" / "demo" / "dev.jsonl"), str(train), "--lang", "zh"]) == 0
    overrides = {"paths.train": str(train), "paths.dev": str(train)}
    fresh = init_nlp(load_config(config_path, overrides=overrides))
    pretrained = init_nlp(load_config(config_path, overrides={**overrides, "paths.init_tok2vec": str(weights)}))
    fresh_params, pretrained_params = _tok2vec_params(fresh), _tok2vec_params(pretrained)
    assert len(fresh_params) == len(pretrained_params) > 0
    # Same seed, same config: only the loaded weights can make them differ.
    assert any(not numpy.array_equal(a, b) for a, b in zip(fresh_params, pretrained_params))
    again = init_nlp(load_config(config_path, overrides={**overrides, "paths.init_tok2vec": str(weights)}))
    assert all(numpy.array_equal(a, b) for a, b in zip(pretrained_params, _tok2vec_params(again)))
