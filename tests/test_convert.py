"""Tests for the converters (spacy_globalpointer.convert) and their command line."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_globalpointer.__main__ import main
from spacy_globalpointer.convert import (
    FORMATS,
    ConversionProblemsError,
    ConversionReport,
    FormatError,
    convert,
    read_bio,
    read_cluener,
    read_cmeee,
    read_jsonl,
    write_docbin,
)

from .conftest import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = shared_data_dir()


@pytest.fixture(scope="module")
def zh():
    return spacy.blank("zh")


@pytest.fixture(scope="module")
def en():
    return spacy.blank("en")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def json_lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


def spans_of(doc, key: str = "sc") -> List[Tuple[str, str]]:
    return [(span.text, span.label_) for span in doc.spans[key]]


def counts(report: ConversionReport) -> dict:
    names = ("n_docs", "n_spans", "n_empty_docs", "n_duplicates", "n_misaligned", "n_malformed", "n_mismatched")
    return {name: getattr(report, name) for name in names}


# ------------------------------------------------------------------------------------------ report


def test_report_summary_lists_counts_and_raise_if_lists_problems():
    report = ConversionReport(source="x.json", n_docs=3, n_spans=2, n_duplicates=1)
    report.label_counts.update(["PER", "LOC"])
    for i in range(25):
        report.add_problem("misaligned", f"x.json: line {i + 1}: bad")
    summary = report.summary()
    assert "x.json: 3 docs (0 empty), 2 spans (LOC 1, PER 1)" in summary
    assert "problems: 25 (25 misaligned, 0 malformed, 0 surface mismatches)" in summary
    report.raise_if(25)
    with pytest.raises(ConversionProblemsError) as error:
        report.raise_if(0)
    message = str(error.value)
    assert "x.json: line 1: bad" in message and "x.json: line 20: bad" in message
    assert "line 21" not in message and "... and 5 more" in message
    with pytest.raises(ValueError, match="Unknown problem kind"):
        report.add_problem("odd", "?")


# ------------------------------------------------------------------------------------------ CLUENER

CLUENER_LINES = json_lines(
    {"text": "北京大学位于北京。", "label": {"organization": {"北京大学": [[0, 3]]}, "address": {"北京": [[0, 1], [6, 7]]}}},
    {"id": 1, "text": "没有标签的测试行"},
    {"text": "", "label": {}},
    {"text": "上海很大", "label": {"address": {"上海市": [[0, 1]]}}},
    '{"text": "坏行"',
    {"text": "张三说", "label": {"name": {"张三": [[0, 1], [0, 1]]}}},
    {"text": "李四", "label": {"name": {"李四": [[0, 5]]}}},
    {"text": "王五", "label": {"name": {"王五": [[0]]}}},
)

JSONL_LINES = json_lines(
    {"text": "Alice lives in New York.", "spans": [
        {"start": 0, "end": 5, "label": "PER"}, {"start": 15, "end": 23, "label": "LOC"},
        {"start": 19, "end": 23, "label": "LOC"}]},
    {"text": "Bob's house", "spans": [{"start": 0, "end": 2, "label": "PER"}]},
    {"text": "Carol", "spans": [{"start": 0, "end": 9, "label": "PER"}]},
    {"text": "Dan", "spans": [{"start": 0, "end": 3, "label": ""}]},
    {"text": "Eve", "spans": [{"start": "0", "end": 3, "label": "PER"}]},
    {"text": "", "spans": []},
    [1, 2],
    {"text": "Frank", "meta": {"source": "x"}},
    {"text": "Gina", "spans": [
        {"start": 0, "end": 4, "label": "PER"}, {"start": 0, "end": 4, "label": "PER"},
        {"start": 0, "end": 4, "label": "ORG"}]},
    {"text": "Hal", "spans": [{"start": 2, "end": 1, "label": "PER"}]},
    {"text": "Ivy", "spans": {"start": 0}},
    {"text": "Jo", "spans": [["0", "2", "PER"]]},
)


def test_read_cluener_counts_every_kind_of_problem(tmp_path, zh):
    path = write(tmp_path, "train.json", CLUENER_LINES)
    docs, report = read_cluener(path, zh)
    assert counts(report) == {
        "n_docs": 7, "n_spans": 4, "n_empty_docs": 1, "n_duplicates": 1,
        "n_misaligned": 0, "n_malformed": 3, "n_mismatched": 1,
    }
    assert len(docs) == 7
    assert [len(doc) for doc in docs[:3]] == [9, 8, 0]
    problems = "\n".join(report.problems)
    assert f"{path}: line 4: span [0, 1] 'address' covers '上海' but the file says '上海市'" in problems
    assert f"{path}: line 5: not valid JSON" in problems
    assert f"{path}: line 7: span [0, 5] 'name' is outside the text" in problems
    assert f"{path}: line 8: label 'name' entity '王五': position [0] is not [start, end]" in problems


def test_read_cluener_keeps_nested_and_overlapping_spans(tmp_path, zh):
    docs, _ = read_cluener(write(tmp_path, "dev.json", CLUENER_LINES), zh, spans_key="gold")
    assert spans_of(docs[0], "gold") == [("北京", "address"), ("北京大学", "organization"), ("北京", "address")]
    assert [(s.start, s.end) for s in docs[0].spans["gold"]] == [(0, 2), (0, 4), (6, 8)]
    assert spans_of(docs[1], "gold") == [] and "gold" in docs[1].spans
    assert spans_of(docs[4], "gold") == [("张三", "name")]


def test_read_cluener_accepts_a_language_code(tmp_path):
    docs, report = read_cluener(write(tmp_path, "a.json", CLUENER_LINES), "zh")
    assert report.n_docs == 7 and docs[0][0].text == "北"


@pytest.mark.parametrize(
    "content,expected",
    [
        ("EU I-ORG\nrejects O\n", "2 of 2 records are not CLUENER records; first bad one: line 1: not valid JSON"),
        (JSONL_LINES, "11 of 12 records are not CLUENER records; first bad one: line 1: it has \"spans\""),
        (json_lines({"text": "x", "spans": []}), 'line 1: it has "spans" but no "label": it looks like the jsonl format'),
        ('[{"text": "x", "entities": []}]\n', "line 1: expected a JSON object"),
        ("", "the file has no records"),
    ],
)
def test_read_cluener_rejects_other_formats(tmp_path, zh, content, expected):
    """No record, or more than half the records, not CLUENER records: FormatError naming the first."""
    path = write(tmp_path, "other.txt", content)
    with pytest.raises(FormatError) as error:
        read_cluener(path, zh)
    assert str(error.value).startswith(f"{path}: not a CLUENER file")
    assert expected in str(error.value)


def test_missing_file_is_named(tmp_path, zh):
    with pytest.raises(FileNotFoundError, match="nope.json: no such file"):
        read_cluener(tmp_path / "nope.json", zh)


# ------------------------------------------------------------------------------------------ CMeEE

CMEEE_RECORDS = [
    {"text": "患者有高血压性心脏病。", "entities": [
        {"start_idx": 3, "end_idx": 9, "type": "dis", "entity": "高血压性心脏病"},
        {"start_idx": 3, "end_idx": 5, "type": "dis", "entity": "高血压"},
        {"start_idx": 7, "end_idx": 8, "type": "bod"},
    ]},
    {"text": "头痛", "entities": [{"start_idx": 0, "end_idx": 1, "type": "sym", "entity": "头疼"}]},
    {"text": "发热", "entities": [{"start_idx": 0, "type": "sym"}]},
    "not an object",
    {"text": "", "entities": []},
    {"text": "无实体"},
]


def test_read_cmeee_nested_entities_and_problems(tmp_path, zh):
    path = write(tmp_path, "CMeEE_dev.json", json.dumps(CMEEE_RECORDS, ensure_ascii=False, indent=1))
    docs, report = read_cmeee(path, zh)
    assert counts(report) == {
        "n_docs": 5, "n_spans": 3, "n_empty_docs": 1, "n_duplicates": 0,
        "n_misaligned": 0, "n_malformed": 2, "n_mismatched": 1,
    }
    assert spans_of(docs[0]) == [("高血压", "dis"), ("高血压性心脏病", "dis"), ("心脏", "bod")]
    problems = "\n".join(report.problems)
    assert f"{path}: record 1: span [0, 1] 'sym' covers '头痛' but the file says '头疼'" in problems
    assert f"{path}: record 2: entities[0] must be an object with start_idx, end_idx and type" in problems
    assert f"{path}: record 3: expected a JSON object" in problems


def test_read_cmeee_rejects_json_lines(tmp_path, zh):
    path = write(tmp_path, "lines.json", json_lines(*CMEEE_RECORDS[:2]))
    with pytest.raises(FormatError, match=r"not a CMeEE file: line 2 column 1: Extra data"):
        read_cmeee(path, zh)
    with pytest.raises(FormatError, match=r"line 1: expected a JSON array of records, got dict"):
        read_cmeee(write(tmp_path, "obj.json", json.dumps(CMEEE_RECORDS[0])), zh)


# ------------------------------------------------------------------------------------------ JSONL

def test_read_jsonl_validates_and_reports_with_line_numbers(tmp_path, en):
    path = write(tmp_path, "data.jsonl", JSONL_LINES)
    docs, report = read_jsonl(path, en)
    assert counts(report) == {
        "n_docs": 10, "n_spans": 5, "n_empty_docs": 1, "n_duplicates": 1,
        "n_misaligned": 1, "n_malformed": 7, "n_mismatched": 0,
    }
    assert spans_of(docs[0]) == [("Alice", "PER"), ("New York", "LOC"), ("York", "LOC")]
    assert spans_of(docs[7]) == [("Gina", "ORG"), ("Gina", "PER")]
    problems = report.problems
    assert problems[0] == (
        f"{path}: line 2: span [0, 2) 'PER' 'Bo' does not align to token boundaries; the nearest token span is "
        "'Bob' [0, 3). Fix the offsets, or use a tokenizer (--lang) that splits there"
    )
    joined = "\n".join(problems)
    assert f"{path}: line 3: span [0, 9) 'PER' is outside the text or empty (text length 5)" in joined
    assert f"{path}: line 4: span [0, 3) '': the label must be a non-empty string" in joined
    assert f"{path}: line 5: span ['0', 3) 'PER': start and end must be integers" in joined
    assert f"{path}: line 7: expected a JSON object" in joined
    assert f"{path}: line 10: span [2, 1) 'PER' is outside the text or empty" in joined
    assert f'{path}: line 11: "spans" must be a list' in joined
    assert f"{path}: line 12: spans[0] must be an object with start, end and label" in joined


def test_read_jsonl_chinese_nested_spans_align(tmp_path, zh):
    path = write(tmp_path, "zh.jsonl", json_lines(
        {"text": "北京大学医学院", "spans": [
            {"start": 0, "end": 7, "label": "ORG"}, {"start": 0, "end": 4, "label": "ORG"},
            {"start": 0, "end": 2, "label": "LOC"}]}))
    docs, report = read_jsonl(path, zh)
    assert report.n_problems == 0
    assert spans_of(docs[0]) == [("北京", "LOC"), ("北京大学", "ORG"), ("北京大学医学院", "ORG")]


# ------------------------------------------------------------------- jsonl: tokens of the record's own

# GENIA-style: entities inside what spaCy's English tokenizer keeps as one token.
GENIA_TEXT = "Activation of AIM)/CD69 needs NF-kappa B."
GENIA_TOKENS = ["Activation", "of", "AIM", ")", "/", "CD69", "needs", "NF-kappa", "B", "."]


def genia_record(**extra):
    record = {
        "text": GENIA_TEXT,
        "spans": [{"start": 19, "end": 23, "label": "protein"}, {"start": 30, "end": 40, "label": "protein"}],
        "tokens": GENIA_TOKENS,
        "token_spans": [{"start": 5, "end": 6, "label": "protein"}, {"start": 7, "end": 9, "label": "protein"}],
    }
    record.update(extra)
    return record


def test_read_jsonl_keeps_entities_inside_tokens_with_the_records_tokens(tmp_path, en):
    path = write(tmp_path, "g.jsonl", json_lines(genia_record()))
    docs, report = read_jsonl(path, en)
    assert report.n_problems == 0 and report.n_docs_from_tokens == 1
    doc = docs[0]
    assert [t.text for t in doc] == GENIA_TOKENS and doc.text == GENIA_TEXT
    assert spans_of(doc) == [("CD69", "protein"), ("NF-kappa B", "protein")]
    assert "docs built from the records' own tokens: 1" in report.summary()
    # spaCy's own tokens lose both entities, and say so.
    docs, report = read_jsonl(path, en, use_tokens=False)
    assert report.n_misaligned == 2 and spans_of(docs[0]) == []


def test_read_jsonl_prodigy_tokens_and_inclusive_token_ends(tmp_path, en):
    text = "IL-2  gene in  T cells"
    tokens = [{"text": w, "id": i} for i, w in enumerate(["IL-2", "gene", "in", "T", "cells"])]
    spans = [{"start": 0, "end": 9, "token_start": 0, "token_end": 1, "label": "DNA"},
             {"start": 0, "end": 4, "token_start": 0, "token_end": 0, "label": "protein"},
             {"start": 15, "end": 22, "token_start": 3, "token_end": 4, "label": "cell_type"}]
    docs, report = read_jsonl(write(tmp_path, "p.jsonl", json_lines({"text": text, "tokens": tokens, "spans": spans})), en)
    assert report.n_problems == 0
    doc = docs[0]
    assert doc.text == text  # the double spaces survive as whitespace tokens
    assert [t.text for t in doc if not t.is_space] == ["IL-2", "gene", "in", "T", "cells"]
    assert spans_of(doc) == [("IL-2", "protein"), ("IL-2  gene", "DNA"), ("T cells", "cell_type")]


def test_read_jsonl_token_problems_are_reported_with_line_and_index(tmp_path, en):
    lines = json_lines(
        genia_record(tokens=["Activation", "of", "AIM)", "CD69"]),  # does not spell out the text
        genia_record(token_spans=[{"start": 5, "end": 12, "label": "protein"}, {"start": 7, "end": 9, "label": "protein"}]),
        genia_record(token_spans=[{"start": 5, "end": 6, "label": "DNA"}, {"start": 7, "end": 9, "label": "protein"}]),
        genia_record(tokens=["Activation", 3]),
        genia_record(),
    )
    path = write(tmp_path, "bad.jsonl", lines)
    docs, report = read_jsonl(path, en)
    joined = "\n".join(report.problems)
    assert f"{path}: line 1: tokens[3] 'CD69' is not the next text at character 18" in joined
    assert f"{path}: line 2: token_spans[0] {{'start': 5, 'end': 12, 'label': 'protein'}} is outside the 10 tokens" in joined
    assert f"{path}: line 3: [19, 23) 'DNA' 'CD69' is in token_spans but not spans" in joined
    assert f"{path}: line 3: [19, 23) 'protein' 'CD69' is in spans but not token_spans" in joined
    assert f"{path}: line 4: tokens[1] must be a non-blank string" in joined
    assert (report.n_malformed, report.n_mismatched, len(docs)) == (3, 2, 3)
    assert spans_of(docs[0]) == [("NF-kappa B", "protein")]  # the bad entry is skipped, the rest kept


def test_read_jsonl_split_at_spans_cuts_tokens_at_gold_boundaries(tmp_path, en):
    record = {"text": GENIA_TEXT, "spans": genia_record()["spans"]}
    path = write(tmp_path, "s.jsonl", json_lines(record, {"text": "No entity here."}))
    docs, report = read_jsonl(path, en, split_at_spans=True)
    assert report.n_problems == 0
    assert spans_of(docs[0]) == [("CD69", "protein"), ("NF-kappa B", "protein")]
    assert docs[0].text == GENIA_TEXT and [t.text for t in docs[1]] == ["No", "entity", "here", "."]
    assert (report.n_tokens_split, report.n_spans_aligned_by_split) == (2, 2)
    assert "split at gold span boundaries: 2 tokens, which aligned 2 spans" in report.summary()


def test_cli_jsonl_token_options(tmp_path, capsys):
    path = write(tmp_path, "g.jsonl", json_lines(genia_record()))
    code, err = run_cli(capsys, "convert", "jsonl", path, tmp_path / "a.spacy", "--lang", "en", "--ignore-tokens")
    assert code == 0 and "2 misaligned" in err
    code, err = run_cli(capsys, "convert", "jsonl", path, tmp_path / "b.spacy", "--lang", "en")
    assert code == 0 and "0 misaligned" in err and "own tokens: 1" in err
    code, err = run_cli(capsys, "convert", "cluener", path, tmp_path / "c.spacy", "--split-at-spans")
    assert code == 2 and "only apply to the jsonl format" in err


def test_read_jsonl_points_cluener_data_to_its_format(tmp_path, zh):
    with pytest.raises(FormatError, match=r'not a jsonl file: .*line 1: it has "label" but no "spans".*cluener'):
        read_jsonl(write(tmp_path, "c.json", CLUENER_LINES.splitlines()[0] + "\n"), zh)


# ------------------------------------------------------------------------------------------ BIO

CONLL_BIO = """-DOCSTART- -X- O O

John NNP I-NP B-PER
Smith NNP I-NP I-PER
visited VBD I-VP O
Paris NNP I-NP B-LOC
. . O O

He PRP I-NP O
left VBD I-VP O

-DOCSTART- -X- O O

Acme NNP I-NP B-ORG
Corp NNP I-NP I-ORG
hired VBD I-VP O
Mary NNP I-NP B-PER
"""

IOB1 = """EU I-ORG
rejects O
German I-MISC
call O

Peter I-PER
Blackburn I-PER

in O
Italy I-LOC
Spain B-LOC
"""

BIO_WITH_ERRORS = """Ann B-PER
went O
to O
Rome I-LOC
and O
Bo B-PER
Li I-LOC
"""

BIOES = """New B-LOC
York E-LOC
is O
big O

Obama S-PER
met O
Angela B-PER
Merkel I-PER
in O
Berlin S-LOC
"""

CHARS = """青 B-ORG
岛 I-ORG
海 I-ORG
牛 I-ORG
队 I-ORG
在 O
青 B-LOC
岛 I-LOC

好 O
"""


def test_read_bio_word_level_sentences(tmp_path, en):
    docs, report = read_bio(write(tmp_path, "a.conll", CONLL_BIO), en)
    assert [doc.text for doc in docs] == ["John Smith visited Paris .", "He left", "Acme Corp hired Mary"]
    assert [t.text for t in docs[0]] == ["John", "Smith", "visited", "Paris", "."]
    assert spans_of(docs[0]) == [("John Smith", "PER"), ("Paris", "LOC")]
    assert spans_of(docs[2]) == [("Acme Corp", "ORG"), ("Mary", "PER")]
    assert counts(report) == {
        "n_docs": 3, "n_spans": 4, "n_empty_docs": 0, "n_duplicates": 0,
        "n_misaligned": 0, "n_malformed": 0, "n_mismatched": 0,
    }
    assert report.notes == ["tag scheme: bio (detected: 0 entities start with I-, 4 B- tags do not follow their own type)"]


def test_read_bio_groups_by_document_with_sentence_starts(tmp_path, en):
    path = write(tmp_path, "a.conll", CONLL_BIO)
    docs, report = read_bio(path, en, group="document")
    assert [doc.text for doc in docs] == ["John Smith visited Paris . He left", "Acme Corp hired Mary"]
    assert [sent.text for sent in docs[0].sents] == ["John Smith visited Paris .", "He left"]
    assert spans_of(docs[1]) == [("Acme Corp", "ORG"), ("Mary", "PER")]
    assert report.n_docs == 2 and report.n_spans == 4
    docs, _ = read_bio(path, en, group=2)
    assert [doc.text for doc in docs] == ["John Smith visited Paris . He left", "Acme Corp hired Mary"]
    docs, _ = read_bio(path, en, group="document", docstart=None)  # -DOCSTART- lines become tokens
    assert len(docs) == 1 and len(list(docs[0].sents)) == 5 and docs[0][0].text == "-DOCSTART-"


def test_read_bio_detects_iob1(tmp_path, en):
    path = write(tmp_path, "iob1.txt", IOB1)
    docs, report = read_bio(path, en)
    spans = [spans_of(doc) for doc in docs]
    assert spans == [[("EU", "ORG"), ("German", "MISC")], [("Peter Blackburn", "PER")], [("Italy", "LOC"), ("Spain", "LOC")]]
    assert report.n_problems == 0
    assert report.notes[0].startswith("tag scheme: iob1 (detected: 4 entities start with I-")
    assert read_bio(path, en, scheme="iob1")[1].n_problems == 0
    # Read as strict BIO, the same spans come out, and each I- that starts an entity is reported.
    docs_bio, report_bio = read_bio(path, en, scheme="bio")
    assert [spans_of(doc) for doc in docs_bio] == spans
    assert report_bio.n_malformed == 4
    assert report_bio.problems[0] == f"{path}: line 1: I-ORG follows the sentence start in BIO; started an entity here"
    assert report_bio.problems[3] == f"{path}: line 10: I-LOC follows O in BIO; started an entity here"


def test_read_bio_repairs_and_reports_stray_inside_tags(tmp_path, en):
    path = write(tmp_path, "bio.txt", BIO_WITH_ERRORS)
    docs, report = read_bio(path, en)
    assert spans_of(docs[0]) == [("Ann", "PER"), ("Rome", "LOC"), ("Bo", "PER"), ("Li", "LOC")]
    assert report.notes == ["tag scheme: bio (detected: 2 entities start with I-, 2 B- tags do not follow their own type)"]
    assert report.problems == [
        f"{path}: line 4: I-LOC follows O in BIO; started an entity here",
        f"{path}: line 7: I-LOC follows B-PER in BIO; started an entity here",
    ]
    assert report.n_malformed == 2


def test_read_bio_iob1_reports_b_tags_iob1_does_not_allow(tmp_path, en):
    path = write(tmp_path, "iob1.txt", IOB1 + "\nthe O\nAtlanta B-MISC\nGames I-MISC\n")
    docs, report = read_bio(path, en)
    assert report.notes[0].startswith("tag scheme: iob1")
    assert spans_of(docs[-1]) == [("Atlanta Games", "MISC")]
    assert report.problems == [
        f"{path}: line 14: B-MISC follows O, but IOB1 uses B- only between two entities of one type; "
        "read it as the start of an entity"
    ]


@pytest.mark.parametrize("text", [BIOES, BIOES.replace("E-", "L-").replace("S-", "U-")])
def test_read_bio_bioes_and_bilou(tmp_path, en, text):
    path = write(tmp_path, "bioes.txt", text)
    docs, report = read_bio(path, en)
    assert [spans_of(doc) for doc in docs] == [
        [("New York", "LOC")], [("Obama", "PER"), ("Angela Merkel", "PER"), ("Berlin", "LOC")]
    ]
    assert report.notes[0] == "tag scheme: bioes (detected: E-/S- tags present)"
    assert report.problems == [f"{path}: line 9: entity PER ends at I-PER without E-PER"]


def test_read_bio_explicit_bio_scheme_rejects_bioes_tags(tmp_path, en):
    path = write(tmp_path, "bioes.txt", BIOES)
    docs, report = read_bio(path, en, scheme="bio")
    assert report.n_malformed == 3  # E-LOC, S-PER and S-LOC: their tokens are kept, tagged O
    assert f"{path}: line 2: tag 'E-LOC' is not O or B/I-TYPE; kept 'York' tagged O" in report.problems[0]
    assert [spans_of(doc) for doc in docs] == [[("New", "LOC")], [("Angela Merkel", "PER")]]


def test_read_bio_char_level(tmp_path, zh):
    docs, report = read_bio(write(tmp_path, "example.dev", CHARS), zh, char_level=True)
    assert [doc.text for doc in docs] == ["青岛海牛队在青岛", "好"]
    assert [t.text for t in docs[0]] == list("青岛海牛队在青岛")
    assert spans_of(docs[0]) == [("青岛海牛队", "ORG"), ("青岛", "LOC")]
    assert report.n_spans == 2 and report.n_problems == 0


def test_read_bio_reports_malformed_lines_and_keeps_their_tokens(tmp_path, en):
    path = write(tmp_path, "bad.txt", "A O\nB X-PER\nC O extra\nD B-PER\nE I-PER\nF O\n")
    docs, report = read_bio(path, en)
    assert [t.text for t in docs[0]] == ["A", "B", "C", "D", "E", "F"]
    assert spans_of(docs[0]) == [("D E", "PER")]
    assert report.n_malformed == 2
    assert report.problems == [
        f"{path}: line 2: tag 'X-PER' is not O or B/I/M/E/S/L/U-TYPE; kept 'B' tagged O (check --scheme and --tag-column)",
        f"{path}: line 3: 3 columns where the file has 2; kept 'C' tagged O",
    ]


def test_read_bio_tag_column(tmp_path, en):
    path = write(tmp_path, "cols.txt", "Paris B-LOC NNP\nis O VBZ\n")
    docs, _ = read_bio(path, en, tag_column=1)
    assert spans_of(docs[0]) == [("Paris", "LOC")]
    with pytest.raises(ValueError, match="tag_column 5 does not exist; the file has 3 columns"):
        read_bio(path, en, tag_column=5)


@pytest.mark.parametrize(
    "content,expected",
    [
        (CLUENER_LINES, "not a BIO column file: 8 of 8 token lines are malformed, first line 1"),
        ("one\ncolumn\nonly\n", "not a BIO column file: line 1 'one' has no tag column"),
        ("\n\n", "not a BIO column file: it has no token lines"),
        ("A O\nB FOO\nC BAR\n", "2 of 3 token lines are malformed, first line 2 'B FOO'"),
    ],
)
def test_read_bio_rejects_other_formats(tmp_path, en, content, expected):
    path = write(tmp_path, "x.txt", content)
    with pytest.raises(FormatError) as error:
        read_bio(path, en)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


def test_read_bio_argument_errors(tmp_path, en):
    path = write(tmp_path, "a.txt", "A O\n")
    with pytest.raises(ValueError, match="Unknown tag scheme 'bmes'"):
        read_bio(path, en, scheme="bmes")
    with pytest.raises(ValueError, match="group must be"):
        read_bio(path, en, group="paragraph")
    with pytest.raises(ValueError, match="group must be"):
        read_bio(path, en, group=0)


# ------------------------------------------------------------------------------------------ convert


def load(path: Path, lang: str = "zh"):
    return list(DocBin().from_disk(path).get_docs(spacy.blank(lang).vocab))


def test_convert_writes_a_docbin_with_spans(tmp_path):
    path = write(tmp_path, "train.json", CLUENER_LINES)
    output = tmp_path / "deep" / "er" / "train.spacy"
    report = convert("cluener", path, output)
    assert report.n_docs == 7 and report.n_problems == 4
    docs = load(output)
    assert len(docs) == 7
    assert spans_of(docs[0]) == [("北京", "address"), ("北京大学", "organization"), ("北京", "address")]


def test_convert_passes_reader_options_and_spans_key(tmp_path):
    output = tmp_path / "dev.spacy"
    report = convert("conll", write(tmp_path, "a.conll", CONLL_BIO), output, group="document", spans_key="ner")
    docs = load(output, "en")
    assert report.n_docs == len(docs) == 2
    assert spans_of(docs[0], "ner") == [("John Smith", "PER"), ("Paris", "LOC")]
    assert len(list(docs[0].sents)) == 2
    convert("peoples_daily", write(tmp_path, "example.dev", CHARS), output)
    assert [doc.text for doc in load(output)] == ["青岛海牛队在青岛", "好"]


def test_convert_strict_raises_and_writes_nothing(tmp_path):
    output = tmp_path / "train.spacy"
    with pytest.raises(ConversionProblemsError, match=r"4 problems \(at most 0 allowed\)"):
        convert("cluener", write(tmp_path, "train.json", CLUENER_LINES), output, strict=True)
    assert not output.exists()
    clean = write(tmp_path, "clean.json", CLUENER_LINES.splitlines()[0] + "\n")
    assert convert("cluener", clean, output, strict=True).n_spans == 3
    assert output.exists()


def test_convert_argument_errors(tmp_path):
    path = write(tmp_path, "a.jsonl", JSONL_LINES)
    with pytest.raises(ValueError, match="Format 'jsonl' needs a language"):
        convert("jsonl", path, tmp_path / "a.spacy")
    with pytest.raises(ValueError, match="Unknown format 'brat'"):
        convert("brat", path, tmp_path / "a.spacy")
    assert set(FORMATS) >= {"cluener", "cmeee", "jsonl", "bio", "bio-char", "conll", "peoples_daily"}


def test_write_docbin_round_trips_user_data(tmp_path, zh):
    doc = zh("北京")
    doc.user_data["id"] = 7
    doc.spans["sc"] = [doc[0:2]]
    path = write_docbin([doc], tmp_path / "a" / "b.spacy")
    loaded = load(path)[0]
    assert loaded.user_data["id"] == 7 and loaded.spans["sc"][0].text == "北京"


# ------------------------------------------------------------------------------------------ CLI


def run_cli(capsys, *args: str) -> Tuple[int, str]:
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def test_cli_convert_prints_report_and_problems(tmp_path, capsys):
    output = tmp_path / "out.spacy"
    code, err = run_cli(capsys, "convert", "jsonl", write(tmp_path, "a.jsonl", JSONL_LINES), output, "--lang", "en")
    assert code == 0
    assert "10 docs (1 empty), 5 spans (LOC 2, ORG 1, PER 2)" in err
    assert "first problems:" in err and "line 2: span [0, 2) 'PER' 'Bo'" in err
    assert f"wrote {output}" in err
    assert len(load(output, "en")) == 10


def test_cli_exit_codes(tmp_path, capsys):
    bad = write(tmp_path, "a.jsonl", JSONL_LINES)
    output = tmp_path / "out.spacy"
    code, err = run_cli(capsys, "convert", "jsonl", bad, output, "--lang", "en", "--strict")
    assert code == 1 and "error:" in err and "line 2:" in err and not output.exists()
    code, err = run_cli(capsys, "convert", "cluener", bad, output)
    assert code == 2 and "not a CLUENER file" in err
    code, err = run_cli(capsys, "convert", "cluener", tmp_path / "missing.json", output)
    assert code == 2 and "missing.json: no such file" in err
    code, err = run_cli(capsys, "convert", "jsonl", bad, output)
    assert code == 2 and "needs a language" in err
    code, err = run_cli(capsys, "convert", "cluener", bad, output, "--scheme", "bio")
    assert code == 2 and "--scheme only apply to the column formats" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "brat", str(bad), str(output)])
    assert exit_info.value.code == 2


def test_cli_column_options(tmp_path, capsys):
    output = tmp_path / "out.spacy"
    code, err = run_cli(capsys, "convert", "bio", write(tmp_path, "a.conll", IOB1), output, "--scheme", "bio", "--group", "2")
    assert code == 0 and "problems: 4 (0 misaligned, 4 malformed" in err
    assert len(load(output, "en")) == 2


def test_python_dash_m_convert(tmp_path):
    output = tmp_path / "out.spacy"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "spacy_globalpointer", "convert", "bio-char", str(write(tmp_path, "x.dev", CHARS)),
         str(output), "--strict"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "2 docs (0 empty), 2 spans (LOC 1, ORG 1)" in result.stderr
    assert [spans_of(doc) for doc in load(output)] == [[("青岛海牛队", "ORG"), ("青岛", "LOC")], []]


# ------------------------------------------------------------------------------------------ real data


def real_file(*parts: str) -> Path:
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not found; set GP_DATA_DIR to the folder holding cluener/, conll2003/, peoples_daily/")
    return path


@pytest.fixture(scope="module")
def cluener_train(zh):
    return read_cluener(real_file("cluener", "train.json"), zh)


@pytest.fixture(scope="module")
def conll_testa(en):
    return read_bio(real_file("conll2003", "eng.testa"), en)


def test_real_cluener_train(cluener_train):
    docs, report = cluener_train
    assert report.n_docs == len(docs) == 10748
    assert report.n_spans == 23971
    assert report.n_problems == 0 and report.n_duplicates == 0 and report.n_empty_docs == 0
    assert report.label_counts["name"] == 3755 and report.label_counts["address"] == 2891
    # Line 1507: a book title holds a company name; both are kept.
    assert spans_of(docs[1506]) == [
        ("《招商银行：投资永隆银行浮亏逾百亿港元》", "book"), ("招商银行", "company"), ("永隆银行", "company")
    ]


def test_real_cluener_dev_and_test(zh):
    _, dev = read_cluener(real_file("cluener", "dev.json"), zh)
    assert (dev.n_docs, dev.n_spans, dev.n_problems) == (1343, 3072, 0)
    _, test = read_cluener(real_file("cluener", "test.json"), zh)
    assert (test.n_docs, test.n_spans, test.n_problems) == (1345, 0, 0)


def test_real_conll_testa(conll_testa):
    docs, report = conll_testa
    assert report.n_docs == len(docs) == 3250
    assert dict(report.label_counts) == {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}
    assert report.n_problems == 0
    assert report.notes[0].startswith("tag scheme: iob1")
    assert sum(len(doc) for doc in docs) == 51362


def test_real_conll_testa_documents(en):
    docs, report = read_bio(real_file("conll2003", "eng.testa"), en, group="document")
    assert report.n_docs == 216 and report.n_spans == 5942


def test_real_peoples_daily_dev(zh):
    docs, report = read_bio(real_file("peoples_daily", "example.dev"), zh, char_level=True)
    assert report.n_docs == 2318
    assert dict(report.label_counts) == {"LOC": 1951, "ORG": 984, "PER": 884}
    assert report.n_problems == 0 and sum(len(doc) for doc in docs) == 109870
    assert docs[1].text.startswith("相比之下，青岛海牛队和广州松日队的雨中之战")


def test_real_conll_train_is_iob1_with_two_irregular_b_tags(en):
    path = real_file("conll2003", "eng.train")
    docs, report = read_bio(path, en)
    assert report.n_docs == 14041
    assert dict(report.label_counts) == {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}
    assert report.notes[0].startswith("tag scheme: iob1 (detected: 23427 entities start with I-, 2 B- tags")
    # "the Atlanta B-MISC Games I-MISC" and "Urdu-speaking B-MISC": B- after O, which IOB1 does not use.
    assert [p.split(": ")[1] for p in report.problems] == ["line 152428", "line 175436"]
