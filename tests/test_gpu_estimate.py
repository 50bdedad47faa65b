"""benchmarks/gpu_estimate.py: the paper estimate of a GPU run, checked where it can be checked.

Parameter counts against real BertModels (built on the meta device, no memory), the FLOP and
memory formulas against hand computation, and the script end to end on a tiny offline BERT.
"""
import json

import pytest
import spacy
from spacy.tokens import DocBin

from .conftest import REPO, load_benchmark

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "gpu_estimate.py"
gpu_estimate = load_benchmark("gpu_estimate")

TINY = {"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 160, "type_vocab_size": 2}


def _bert_on_meta(config):
    with torch.device("meta"):
        return transformers.BertModel(transformers.BertConfig(**config))


@pytest.mark.parametrize("config", [TINY, gpu_estimate.BERT_BASE_CHINESE], ids=["tiny", "bert-base-chinese"])
def test_parameter_count_matches_a_real_bert(config):
    model = _bert_on_meta(config)
    assert gpu_estimate.bert_parameters(config)["total"] == sum(p.numel() for p in model.parameters())
    layers = sum(p.numel() for name, p in model.named_parameters() if name.startswith("encoder."))
    assert gpu_estimate.bert_parameters(config)["layers"] == layers


def test_head_parameters_match_the_component():
    from spacy_globalpointer.torch_layers import GlobalPointerHead

    head = GlobalPointerHead(96, 3, head_size=64)
    projections = sum(p.numel() for name, p in head.named_parameters() if not name.startswith("offset"))
    assert gpu_estimate.head_parameters(96, 3, 64) == projections


def test_flops_and_memory_by_hand():
    seq = 10.0
    flops = gpu_estimate.training_flops_per_wordpiece(TINY, seq, n_labels=2)
    weights = gpu_estimate.bert_parameters(TINY, with_pooler=False)["layers"] + gpu_estimate.head_parameters(32, 2)
    assert flops == pytest.approx(6 * weights + 12 * 2 * 32 * seq + 6 * 2 * 64 * seq)
    # Korthikanti et al.: s*b*h*(34 + 5*a*s/h) bytes per layer.
    assert gpu_estimate.activation_bytes(TINY, 10, 4) == pytest.approx(2 * 10 * 4 * 32 * (34 + 5 * 2 * 10 / 32))


def test_estimate_scales_with_what_was_measured():
    measured = {"words_per_second": 100.0, "wordpieces_per_word": 1.5, "mean_seq_len": 20.0,
                "config": TINY, "n_labels": 4}
    target = {"wordpieces": 10000, "mean_seq_len": 30.0, "n_labels": 10, "docs": 300}
    one = gpu_estimate.estimate(measured, 50.0, gpu_estimate.BERT_BASE_CHINESE, target)
    two = gpu_estimate.estimate({**measured, "words_per_second": 200.0}, 50.0, gpu_estimate.BERT_BASE_CHINESE, target)
    assert two["efficiency"] == pytest.approx(2 * one["efficiency"])
    for name in gpu_estimate.GPUS:
        assert two["gpus"][name]["seconds_per_epoch"] == pytest.approx(one["gpus"][name]["seconds_per_epoch"] / 2)
        g = one["gpus"][name]
        assert g["seconds_per_epoch_at_half_efficiency"] == pytest.approx(2 * g["seconds_per_epoch"])
    t4, a100 = one["gpus"]["T4"], one["gpus"]["A100"]
    assert t4["seconds_per_epoch"] / a100["seconds_per_epoch"] == pytest.approx(312 / 65)
    # 16 bytes per parameter for the weights, their gradients and Adam's two moments.
    params = one["target_parameters"]
    assert one["memory"]["weights_grads_adam_gb"] == pytest.approx(16 * (params["total"] + params["head"]) / 1e9)
    assert one["memory"]["total_gb"] == pytest.approx(sum(v for k, v in one["memory"].items() if k != "total_gb"))


def test_script_end_to_end(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "."]
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf8")
    transformers.BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    (model_dir / "config.json").write_text(json.dumps({**TINY, "vocab_size": len(vocab)}), encoding="utf8")
    nlp = spacy.blank("en")
    DocBin(docs=[nlp("the cat sat on the mats ."), nlp("the cat")]).to_disk(tmp_path / "train.spacy")
    result = {"best": {"per_type": {"A": {}, "B": {}}}, "train": {"words_per_second_excl_eval": 500.0}}
    (tmp_path / "result.json").write_text(json.dumps(result), encoding="utf8")
    target = tmp_path / "cluener.json"
    target.write_text('{"text": "北京大学", "label": {"org": {}}}\n{"text": "上海", "label": {"loc": {}}}\n',
                      encoding="utf8")
    out = tmp_path / "out"
    assert gpu_estimate.main(["--result", str(tmp_path / "result.json"), "--measured-model", str(model_dir),
                              "--measured-train", str(tmp_path / "train.spacy"), "--target-train", str(target),
                              "--out", str(out)]) == 0
    report = json.loads((out / "gpu_estimate.json").read_text(encoding="utf8"))
    # "mats" is two wordpieces (mat ##s): 10 wordpieces for 9 words.
    assert report["measured"]["wordpieces_per_word"] == pytest.approx(10 / 9)
    assert report["target"] == {"name": "bert-base-chinese", "docs": 2, "wordpieces": 6 + 2 * 2,
                                "mean_seq_len": pytest.approx((4 * 6 + 2 * 4) / 6), "n_labels": 2}
    assert report["gemm_gflops"] > 0 and 0 < report["estimate"]["efficiency"]
    assert (out / "gpu_estimate.md").read_text(encoding="utf8").startswith("**An estimate, not a measurement**")
