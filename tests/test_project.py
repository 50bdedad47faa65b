"""The Weasel workflow `all` runs offline on the shipped demo data and leaves every output."""
import json
import shutil
import subprocess
import sys

import pytest
import srsly

import spacy_globalpointer

from .conftest import REPO

PACKAGE = "zh_globalpointer_demo"


@pytest.fixture(scope="module")
def project_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in ("project.yml", "configs", "assets"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    cmd = [sys.executable, "-m", "spacy", "project", "run", "all", str(root),
           "--vars.max_steps", "60", "--vars.eval_frequency", "30"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return root, result


def test_all_workflow_outputs(project_run):
    root, result = project_run
    assert (root / "training" / "demo" / "model-best" / "global_pointer" / "model").exists()
    metrics = srsly.read_json(root / "metrics" / "demo.json")
    assert set(metrics) >= {"p", "r", "f", "per_type", "n_docs"}
    assert metrics["n_docs"] == 300 and set(metrics["per_type"]) == {"PER", "LOC", "ORG"}
    assert "| **all** |" in (root / "metrics" / "demo.md").read_text(encoding="utf8")
    html = (root / "visualize" / "demo.html").read_text(encoding="utf8")
    assert "span" in html and html.count("<div") > 10
    meta = json.loads((root / "packages" / f"{PACKAGE}-0.1.0" / "meta.json").read_text())
    # spacy package names the installed version of this package, e.g. >=0.2.0,<0.3.0
    assert f"spacy-globalpointer>={spacy_globalpointer.__version__}" in " ".join(meta["requirements"])


def test_rerun_skips_unchanged_steps(project_run):
    root, _ = project_run
    cmd = [sys.executable, "-m", "spacy", "project", "run", "train", str(root),
           "--vars.max_steps", "60", "--vars.eval_frequency", "30"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert result.returncode == 0
    assert "Skipping 'train': nothing changed" in result.stdout


@pytest.mark.parametrize("command,output,key", [
    ("tune-thresholds", "model-tuned", "thresholds"),
    ("calibrate", "model-calibrated", "calibration"),
])
def test_threshold_commands_write_a_pipeline_and_a_report(project_run, command, output, key):
    """`spacy project run tune-thresholds` / `calibrate` on the trained demo model: the pipeline
    they write carries what the report says they chose."""
    root, _ = project_run
    result = subprocess.run([sys.executable, "-m", "spacy", "project", "run", command, str(root)],
                            capture_output=True, text=True, cwd=root, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    cfg = json.loads((root / "training" / "demo" / output / "global_pointer" / "cfg").read_text(encoding="utf8"))
    report = srsly.read_json(root / "metrics" / f"demo_{key}.json")
    assert set(report[key]) == {"PER", "LOC", "ORG"}
    assert cfg[key] == pytest.approx(report[key]) if key == "thresholds" else set(cfg[key]) == set(report[key])


def test_package_installs_and_loads_by_name(project_run, tmp_path):
    root, _ = project_run
    sdist = root / "packages" / f"{PACKAGE}-0.1.0" / "dist" / f"{PACKAGE}-0.1.0.tar.gz"
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--target", str(target), str(sdist)]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    code = (
        f"import spacy; nlp = spacy.load('{PACKAGE}'); doc = nlp('北京大学位于北京');"
        "print(nlp.pipe_names, len(doc.spans['sc']))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "global_pointer" in loaded.stdout


def test_genia_workflow_on_the_first_records(tmp_path):
    """`spacy project run genia` (convert on the records' own tokens, train, evaluate) on the
    first records of each GENIA split."""
    from .conftest import shared_data_dir

    genia = shared_data_dir() / "genia"
    if not (genia / "train.jsonl").is_file():
        pytest.skip(f"GENIA not found in {genia}")
    sample = tmp_path / "genia"
    sample.mkdir()
    for split, n in (("train", 80), ("dev", 20), ("test", 20)):
        with (genia / f"{split}.jsonl").open(encoding="utf8") as file_:
            lines = [next(file_) for _ in range(n)]
        (sample / f"{split}.jsonl").write_text("".join(lines), encoding="utf8")
    root = tmp_path / "project"
    root.mkdir()
    for name in ("project.yml", "configs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    cmd = [sys.executable, "-m", "spacy", "project", "run", "genia", str(root), "--vars.genia_dir", str(sample),
           "--vars.max_steps", "10", "--vars.eval_frequency", "5"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (root / "training" / "genia" / "model-best" / "global_pointer" / "model").exists()
    for split, n in (("dev", 20), ("test", 20)):
        metrics = srsly.read_json(root / "metrics" / f"genia_{split}.json")
        assert metrics["n_docs"] == n
        # Recall by kind of gold span: about a fifth of GENIA's entities nest, so 20 sentences
        # hold both kinds.
        by_kind = metrics["recall_by_kind"]
        assert 0.0 <= by_kind["flat"] <= 1.0 and 0.0 <= by_kind["nested"] <= 1.0, by_kind


def test_pretrain_then_train_cluener_on_the_first_records(tmp_path):
    """`pretrain-cluener` (unlabelled CLUENER train/test and People's Daily text, never CLUENER dev)
    and `train-cluener` starting from its weights, on the first records of each file."""
    from .conftest import shared_data_dir

    data = shared_data_dir()
    if not (data / "cluener" / "test.json").is_file() or not (data / "peoples_daily" / "example.dev").is_file():
        pytest.skip(f"CLUENER or People's Daily not found in {data}")
    cluener, pd = tmp_path / "cluener", tmp_path / "peoples_daily"
    cluener.mkdir()
    pd.mkdir()
    for name, n in (("train.json", 150), ("dev.json", 30), ("test.json", 50)):
        with (data / "cluener" / name).open(encoding="utf8") as file_:
            (cluener / name).write_text("".join(next(file_) for _ in range(n)), encoding="utf8")
    for name in ("example.dev", "example.test"):
        # The first 40 sentences (blank-line separated, one character and its tag per line).
        sentences = (data / "peoples_daily" / name).read_text(encoding="utf8").split("\n\n")[:40]
        (pd / name).write_text("\n\n".join(sentences) + "\n", encoding="utf8")
    root = tmp_path / "project"
    root.mkdir()
    for name in ("project.yml", "configs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    common = ["--vars.data_dir", str(cluener), "--vars.pd_dir", str(pd)]
    for command, extra in (
        ("convert-cluener", []),
        ("pretrain-cluener", ["--vars.pretrain_epochs", "1"]),
        ("train-cluener", ["--vars.max_steps", "4", "--vars.eval_frequency", "2",
                           "--vars.init_tok2vec", "training/pretrain-cluener/model-last.bin"]),
    ):
        cmd = [sys.executable, "-m", "spacy", "project", "run", command, str(root)] + common + extra
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=900)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    texts = [json.loads(line)["text"] for line in (root / "corpus" / "pretrain" / "cluener.jsonl").open(encoding="utf8")]
    dev_texts = {json.loads(line)["text"] for line in (cluener / "dev.json").open(encoding="utf8")}
    assert len(texts) == len(set(texts)) > 150 and not dev_texts & set(texts)
    config = (root / "training" / "cluener" / "model-best" / "config.cfg").read_text(encoding="utf8")
    assert "training/pretrain-cluener/model-last.bin" in config
