"""An estimate, on paper, of what a transformer run needs on a GPU, from what was measured on CPU.

    python benchmarks/gpu_estimate.py --result results/conll_trf/global_pointer/result.json \\
        --measured-model assets/minilm --measured-train corpus/conll/train.spacy \\
        --target-train ../shared/data/cluener/train.json --out results/conll_trf/gpu_estimate

No GPU is available to this project, so every GPU figure here is an estimate. It is derived in
three steps, each printed with its inputs:

1. The measured run (a compare.py result of global_pointer on a BERT-style encoder, one CPU thread)
   gives training words/s; the encoder's config and tokenizer give its parameters and the
   wordpieces per word of the training data, hence the FLOPs per second the run achieved
   (forward + backward = 3x the forward's 2 FLOPs per weight per wordpiece, plus attention).
2. A large fp32 matrix product on the same thread gives the CPU's attainable peak; achieved / peak
   is the run's efficiency (what spaCy, the alignment, small batches and padding cost).
3. The target (bert-base-chinese by default) on the target data (CLUENER train: one wordpiece per
   character, an upper bound) gives FLOPs per epoch; at a GPU's dense fp16 tensor-core peak times
   the same efficiency (and half of it, as a pessimistic bound), that is the time per epoch.
   Memory: fp32 weights, gradients and Adam's two moments (16 bytes per parameter), fp16
   activations of one batch (Korthikanti et al. 2022, no recomputation: s*b*h*(34 + 5*a*s/h) bytes
   per layer), the head's span scores, and the CUDA context (an assumption, not a measurement).
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

# bert-base-chinese's config.json (the figures the estimate needs).
BERT_BASE_CHINESE = {
    "vocab_size": 21128, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
}
# Dense fp16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
GPUS = {"T4": 65.0, "A10": 125.0, "V100 (SXM2)": 125.0, "A100": 312.0}
CUDA_CONTEXT_GB = 0.5  # assumed: the CUDA context and cuBLAS workspaces of a torch process
HEAD_SIZE = 64  # global_pointer's head_size in the transformer configs
WINDOW = 128  # strided_spans window (wordpieces, without the 2 special tokens)


def bert_parameters(config: Dict[str, Any], with_pooler: bool = True) -> Dict[str, int]:
    """Parameters of a BertModel (embeddings, encoder layers, pooler) from its config."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    embeddings = (config["vocab_size"] + config["max_position_embeddings"] + config["type_vocab_size"]) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    pooler = h * h + h if with_pooler else 0
    return {"embeddings": embeddings, "layers": layers * layer, "pooler": pooler,
            "total": embeddings + layers * layer + pooler}


def head_parameters(hidden: int, n_labels: int, head_size: int = HEAD_SIZE) -> int:
    """global_pointer's per-type q/k projections (GlobalPointer.v1), weights and biases."""
    return (hidden + 1) * 2 * head_size * n_labels


def training_flops_per_wordpiece(config: Dict[str, Any], seq_len: float, n_labels: int) -> float:
    """Forward + backward FLOPs per wordpiece: 6 per encoder and head weight (embeddings are
    lookups), 12 * layers * h * s for the attention products, 6 * labels * head_size * s for the
    head's pairwise scores."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    weights = bert_parameters(config, with_pooler=False)["layers"] + head_parameters(h, n_labels)
    return 6.0 * weights + 12.0 * layers * h * seq_len + 6.0 * n_labels * HEAD_SIZE * seq_len


def activation_bytes(config: Dict[str, Any], seq_len: float, batch: float) -> float:
    """fp16 activations kept for the backward pass, all layers (Korthikanti et al. 2022)."""
    h, a, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
    return layers * seq_len * batch * h * (34.0 + 5.0 * a * seq_len / h)


def measure_gemm_gflops(size: int = 1024, repeats: int = 5) -> float:
    """The attainable fp32 matmul rate on the current torch thread count, GFLOP/s (best of repeats)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def wordpiece_stats(model_dir: Path, train: Path, limit: int = 3000) -> Dict[str, float]:
    """Wordpieces per spaCy token and the token-weighted mean window length, on the first docs."""
    import spacy
    from spacy.tokens import DocBin
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    docs = list(DocBin().from_disk(train).get_docs(spacy.blank("en").vocab))[:limit]
    words = pieces = weighted = 0
    for doc in docs:
        n = len(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        seq = min(n, WINDOW) + 2
        words, pieces, weighted = words + len(doc), pieces + n, weighted + n * seq
    return {"docs": len(docs), "wordpieces_per_word": pieces / words, "mean_seq_len": weighted / pieces}


def target_stats(train: Path) -> Dict[str, float]:
    """CLUENER-style JSON lines: characters (= wordpieces, an upper bound for a Chinese BERT) and
    the token-weighted mean sequence length."""
    chars = weighted = docs = 0
    labels = set()
    with train.open(encoding="utf8") as file_:
        for line in file_:
            if not line.strip():
                continue
            record = json.loads(line)
            n = len(record["text"])
            chars, weighted, docs = chars + n, weighted + n * (min(n, WINDOW) + 2), docs + 1
            labels.update((record.get("label") or {}).keys())
    return {"docs": docs, "wordpieces": chars + 2 * docs, "mean_seq_len": weighted / max(chars, 1),
            "n_labels": len(labels)}


def estimate(
    measured: Dict[str, Any], gemm_gflops: float, target_config: Dict[str, Any], target: Dict[str, float],
    batch_tokens: int = 2000,
) -> Dict[str, Any]:
    """Everything but the measurements: achieved rate, efficiency, target FLOPs, time and memory."""
    achieved = (measured["words_per_second"] * measured["wordpieces_per_word"]
                * training_flops_per_wordpiece(measured["config"], measured["mean_seq_len"], measured["n_labels"]))
    efficiency = achieved / 1e9 / gemm_gflops
    per_piece = training_flops_per_wordpiece(target_config, target["mean_seq_len"], target["n_labels"])
    epoch_flops = per_piece * target["wordpieces"]
    params = bert_parameters(target_config)
    params["head"] = head_parameters(target_config["hidden_size"], target["n_labels"])
    seq = target["mean_seq_len"]
    batch = batch_tokens / max(seq - 2, 1.0)  # batch_by_padded: padded tokens per batch <= size
    memory = {
        "weights_grads_adam_gb": 16.0 * (params["total"] + params["head"]) / 1e9,
        "activations_gb": activation_bytes(target_config, seq, batch) / 1e9,
        "head_scores_gb": 3 * 4.0 * batch * target["n_labels"] * seq * seq / 1e9,  # scores, grads, mask
        "cuda_context_gb": CUDA_CONTEXT_GB,
    }
    memory["total_gb"] = sum(memory.values())
    gpus = {}
    for name, tflops in GPUS.items():
        rate = tflops * 1e12 * efficiency
        gpus[name] = {"peak_tflops": tflops, "seconds_per_epoch": epoch_flops / rate,
                      "seconds_per_epoch_at_half_efficiency": 2 * epoch_flops / rate}
    return {
        "achieved_gflops": achieved / 1e9, "efficiency": efficiency, "target_parameters": params,
        "target_flops_per_wordpiece": per_piece, "target_epoch_flops": epoch_flops,
        "target_cpu_hours_per_epoch_one_thread": epoch_flops / achieved / 3600,
        "batch_docs": batch, "memory": memory, "gpus": gpus,
    }


def format_markdown(report: Dict[str, Any]) -> str:
    m, e, t = report["measured"], report["estimate"], report["target"]
    lines = [
        "**An estimate, not a measurement** (no GPU is available to this project).",
        "",
        f"Measured on this CPU (one thread): {m['name']} training at {m['words_per_second']:.0f} words/s, "
        f"{m['wordpieces_per_word']:.2f} wordpieces per word, mean window {m['mean_seq_len']:.0f} wordpieces: "
        f"{e['achieved_gflops']:.1f} GFLOP/s achieved against {report['gemm_gflops']:.1f} GFLOP/s for a "
        f"1024x1024 fp32 matmul, an efficiency of {e['efficiency'] * 100:.0f}%.",
        "",
        f"Target: {t['name']} ({e['target_parameters']['total'] / 1e6:.1f}M parameters, head "
        f"{e['target_parameters']['head'] / 1e6:.2f}M) on {t['docs']} training texts, "
        f"{t['wordpieces']} wordpieces (one per character, an upper bound), {t['n_labels']} labels: "
        f"{e['target_epoch_flops'] / 1e12:.0f} TFLOP per epoch "
        f"({e['target_cpu_hours_per_epoch_one_thread']:.1f} h per epoch on one thread of this CPU).",
        "",
        "| GPU | dense fp16 peak TFLOP/s | s per epoch at the CPU's efficiency | at half of it |",
        "|---|---:|---:|---:|",
    ]
    for name, g in e["gpus"].items():
        lines.append(f"| {name} | {g['peak_tflops']:.0f} | {g['seconds_per_epoch']:.0f} "
                     f"| {g['seconds_per_epoch_at_half_efficiency']:.0f} |")
    mem = e["memory"]
    lines += [
        "",
        f"Memory at batch_by_padded 2000 (about {e['batch_docs']:.0f} texts per batch): weights, gradients "
        f"and Adam moments {mem['weights_grads_adam_gb']:.2f} GB, fp16 activations {mem['activations_gb']:.2f} GB, "
        f"head scores {mem['head_scores_gb']:.3f} GB, CUDA context {mem['cuda_context_gb']:.1f} GB (assumed): "
        f"about **{mem['total_gb']:.1f} GB**.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--result", type=Path, required=True, help="compare.py result.json of the measured run")
    parser.add_argument("--measured-model", type=Path, required=True, help="the measured encoder's folder")
    parser.add_argument("--measured-train", type=Path, required=True, help="the measured run's train DocBin")
    parser.add_argument("--target-train", type=Path, required=True, help="CLUENER train.json")
    parser.add_argument("--target-config", type=Path, default=None,
                        help="the target's config.json (default: bert-base-chinese's figures)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    result = json.loads(args.result.read_text(encoding="utf8"))
    config = json.loads((args.measured_model / "config.json").read_text(encoding="utf8"))
    labels = result["best"]["per_type"]
    measured = {"name": args.measured_model.name, "config": config, "n_labels": len(labels),
                "words_per_second": result["train"]["words_per_second_excl_eval"],
                **wordpiece_stats(args.measured_model, args.measured_train)}
    target_config = (json.loads(args.target_config.read_text(encoding="utf8")) if args.target_config
                     else BERT_BASE_CHINESE)
    target = {"name": args.target_config.parent.name if args.target_config else "bert-base-chinese",
              **target_stats(args.target_train)}
    gemm = measure_gemm_gflops()
    report = {"measured": measured, "target": target, "gemm_gflops": gemm,
              "estimate": estimate(measured, gemm, target_config, target)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_estimate.json").write_text(json.dumps(report, indent=2), encoding="utf8")
    table = format_markdown(report)
    (args.out / "gpu_estimate.md").write_text(table, encoding="utf8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
