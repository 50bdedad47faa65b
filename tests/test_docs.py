"""The docs cannot drift from the code: README.md's snippets marked `<!-- test: run -->` run, and
every command, option, config key, project command, registered name, file and link named in
README.md and docs/*.md exists."""
import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
import spacy
import srsly

from spacy_globalpointer.__main__ import _parser

from .conftest import REPO, load_benchmark

DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
RUN_MARK = "<!-- test: run -->"
# spaCy's own options of the commands the docs use (the rest are config overrides).
SPACY_OPTIONS = {
    "train": {"--output", "-o", "--code", "-c", "--verbose", "-V", "--gpu-id", "-g"},
    "pretrain": {"--code", "-c", "--resume-path", "-r", "--epoch-resume", "-er", "--gpu-id", "-g"},
}


def code_blocks(path: Path) -> Iterator[Tuple[str, str, str]]:
    """(language, code, the line before the opening fence) of each fenced block."""
    text = path.read_text(encoding="utf8")
    for match in re.finditer(r"(?ms)^([^\n]*)\n```(\w*)\n(.*?)^```", text):
        yield match.group(2), match.group(3), match.group(1)


def commands(path: Path) -> Iterator[str]:
    """Every command line in the file: lines of code blocks (continuations joined) and inline
    code that starts with `python`."""
    for language, code, _ in code_blocks(path):
        if language in ("bash", "sh", ""):
            for line in code.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith(("python", "HF_HUB_OFFLINE=1 python", "bash")):
                    yield line
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf8"))
    # Indented code blocks (four spaces), continuations joined.
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("    ") and line.strip().startswith("python"):
            yield line.split("  #")[0].strip()
    for inline in re.findall(r"`([^`\n]+)`", text):
        if inline.startswith("python ") or inline.startswith("spacy project run "):
            yield inline


def words(command: str) -> List[str]:
    command = command.replace("HF_HUB_OFFLINE=1 ", "")
    command = re.sub(r"\[[^\]]*\]", "", command)  # optional parts written as [--flag X]
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def options(parts: List[str]) -> Set[str]:
    return {part.split("=")[0] for part in parts if part.startswith("-") and not re.match(r"-\d", part)}


def captured_parser(path: Path) -> argparse.ArgumentParser:
    """The argument parser a benchmark script's main() builds (captured, not run)."""

    class Captured(Exception):
        pass

    original = argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise Captured(self)

    module = load_benchmark(path.stem)
    argparse.ArgumentParser.parse_known_args = capture
    try:
        module.main(["--help"])
    except Captured as captured:
        return captured.args[0]
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise AssertionError(f"{path.name}: main() parsed no arguments")


def parser_options(parser: argparse.ArgumentParser) -> Set[str]:
    return set(parser._option_string_actions)


def config_has(config: Dict, dotted: str) -> bool:
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.fixture(scope="module")
def cli() -> Dict[str, Set[str]]:
    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: parser_options(parser) for name, parser in subparsers.choices.items()}


@pytest.fixture(scope="module")
def project() -> Dict:
    return srsly.read_yaml(REPO / "project.yml")


def all_commands() -> List[Tuple[str, str]]:
    return [(path.name, command) for path in DOCS for command in commands(path)]


def test_the_docs_name_commands_at_all():
    named = all_commands()
    assert len(named) > 40
    assert any("spacy_globalpointer annotate" in command for _, command in named)


def test_every_spacy_globalpointer_command_and_option_exists(cli):
    for where, command in all_commands():
        parts = words(command)
        if parts[:3] != ["python", "-m", "spacy_globalpointer"]:
            continue
        name = parts[3]
        assert name in cli, f"{where}: {command!r}: no command {name!r} (commands: {sorted(cli)})"
        unknown = options(parts[4:]) - cli[name]
        assert not unknown, f"{where}: {command!r}: {name} has no option {sorted(unknown)}"


def test_every_benchmark_script_and_option_exists():
    parsers: Dict[str, Set[str]] = {}
    for where, command in all_commands():
        parts = words(command)
        if len(parts) < 2 or parts[0] != "python" or not parts[1].startswith("benchmarks/"):
            continue
        script = REPO / parts[1]
        assert script.is_file(), f"{where}: {command!r}: no script {parts[1]}"
        if script.name not in parsers:
            parsers[script.name] = parser_options(captured_parser(script))
            if script.name == "ablate.py":  # what it does not know goes on to compare.py
                parsers[script.name] |= parser_options(captured_parser(REPO / "benchmarks" / "compare.py"))
        # --section.key overrides go on to spacy train
        unknown = {opt for opt in options(parts[2:]) if "." not in opt} - parsers[script.name]
        assert not unknown, f"{where}: {command!r}: {script.name} has no option {sorted(unknown)}"


def test_every_spacy_train_override_names_a_key_of_its_config():
    for where, command in all_commands():
        parts = words(command)
        if parts[:3] != ["python", "-m", "spacy"] or parts[3] not in SPACY_OPTIONS:
            continue
        config_path = next((REPO / part for part in parts[4:] if part.endswith(".cfg")), None)
        assert config_path is not None and config_path.is_file(), f"{where}: {command!r}: no config file"
        config = spacy.util.load_config(config_path, interpolate=False)
        for option in options(parts[4:]) - SPACY_OPTIONS[parts[3]]:
            assert config_has(config, option[2:]), f"{where}: {command!r}: {config_path.name} has no {option[2:]}"


def test_every_project_command_and_variable_exists(project):
    names = {command["name"] for command in project["commands"]} | set(project["workflows"])
    variables = set(project["vars"])
    for where, command in all_commands():
        parts = words(command)
        if "project" not in parts or "run" not in parts:
            continue
        name = parts[parts.index("run") + 1]
        assert name in names, f"{where}: {command!r}: project.yml has no command or workflow {name!r}"
        unknown = {opt[len("--vars."):] for opt in options(parts) if opt.startswith("--vars.")} - variables
        assert not unknown, f"{where}: {command!r}: project.yml has no variables {sorted(unknown)}"


def test_every_registered_name_the_docs_use_is_registered():
    registries = ("architectures", "misc", "scorers", "factories", "callbacks")
    for path in DOCS:
        for name in set(re.findall(r"spacy-globalpointer\.[A-Za-z_]+\.v\d+", path.read_text(encoding="utf8"))):
            assert any(spacy.registry.has(registry, name) for registry in registries), f"{path.name}: {name}"


def project_outputs(project: Dict) -> Set[str]:
    """The files and folders (and the folders above them) that project.yml's commands write."""
    written = set()
    for command in project["commands"]:
        for output in command.get("outputs", []) + command.get("outputs_no_cache", []):
            parts = Path(output).parts
            written.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return written


def test_every_file_and_link_the_docs_name_exists(project):
    anchors: Dict[Path, Set[str]] = {}
    written = project_outputs(project)
    for path in DOCS:
        text = path.read_text(encoding="utf8")
        for named in re.findall(r"`((?:configs|benchmarks|docs|spacy_globalpointer|assets|tests)/[\w./-]+)`", text):
            named = named.rstrip("/")
            assert (REPO / named).exists() or named in written, f"{path.name}: {named} does not exist"
        for target in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", text):
            link, anchor = target
            if link.startswith("http"):
                continue
            file = (path.parent / link).resolve() if link else path
            assert file.exists(), f"{path.name}: the link {link} leads nowhere"
            if anchor and file.suffix == ".md":
                if file not in anchors:
                    anchors[file] = {slug(heading) for heading in re.findall(r"(?m)^#+ (.+)$", file.read_text(encoding="utf8"))}
                assert anchor[1:] in anchors[file], f"{path.name}: no heading for {link}{anchor}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def runnable_snippets() -> List[str]:
    return [code for language, code, before in code_blocks(REPO / "README.md")
            if before.strip() == RUN_MARK and language == "python"]


def test_the_quickstart_runs_and_finds_the_nested_spans(tmp_path):
    snippets = runnable_snippets()
    assert len(snippets) == 1
    result = subprocess.run([sys.executable, "-c", snippets[0]], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "('北京大学', 'ORG')" in result.stdout and "('北京', 'LOC')" in result.stdout


def test_no_placeholder_is_left_in_the_docs():
    """A line that is one upper-case name (a placeholder for figures still to come) is not a doc."""
    for path in DOCS:
        left = re.findall(r"(?m)^[A-Z][A-Z0-9_]{5,}$", path.read_text(encoding="utf8"))
        assert not left, f"{path.name}: placeholders left: {left}"
