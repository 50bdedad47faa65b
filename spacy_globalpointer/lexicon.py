"""SoftLexicon features (Ma et al. 2020, "Simplify the Usage of Lexicon in Chinese NER").

A character-level model does not know which words a character belongs to. SoftLexicon looks
every dictionary word up in the doc and gives each token four sets: the words it Begins, is
in the Middle of, Ends, or that are the token alone (Single). Each set becomes the weighted mean
of its words' embeddings (a special NONE word stands in for an empty set); the four vectors are
concatenated to the token's own embedding. The weights follow the paper, z(w) normalised over
the token's four sets together, with z(w) = log(1 + frequency) by default so that a handful of
very frequent words does not drown the others.

Words are embedded by hash (thinc's HashEmbed), so the dictionary is not stored in the
pipeline: it is read again when the pipeline is loaded, from the installed `jieba` package
(`spacy-globalpointer.jieba_lexicon.v1`) or from a file (`spacy-globalpointer.lexicon_file.v1`).
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy
from spacy.strings import get_string_id
from spacy.tokens import Doc
from thinc.api import HashEmbed, Maxout, Model, chain, list2ragged, ragged2list, with_array
from thinc.types import Floats2d

Lexicon = Dict[str, float]
# The four sets, in the order their vectors are concatenated.
SETS = ("B", "M", "E", "S")
WEIGHTINGS = ("log", "frequency", "uniform")


def read_lexicon(path: Union[str, Path], *, max_word_length: int = 8, min_frequency: float = 0.0) -> Lexicon:
    """A dictionary file: one word per line, optionally followed by a frequency and anything else
    (jieba's `word freq tag` format). A word without a frequency counts 1; a frequency that is not
    a number is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Lexicon file not found: {path}")
    words: Lexicon = {}
    with path.open(encoding="utf8") as file_:
        for number, line in enumerate(file_, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                frequency = float(fields[1]) if len(fields) > 1 else 1.0
            except ValueError:
                raise ValueError(
                    f"{path}, line {number}: the frequency of {fields[0]!r} is not a number: {fields[1]!r}"
                ) from None
            if frequency < 0:
                raise ValueError(f"{path}, line {number}: negative frequency {frequency} for {fields[0]!r}")
            if len(fields[0]) <= max_word_length and frequency >= min_frequency:
                words[fields[0]] = words.get(fields[0], 0.0) + frequency
    if not words:
        raise ValueError(f"{path} holds no word of at most {max_word_length} characters "
                         f"with frequency >= {min_frequency}")
    return words


def lexicon_file(path: str, max_word_length: int = 8, min_frequency: float = 0.0) -> Callable[[], Lexicon]:
    """spacy-globalpointer.lexicon_file.v1: the words of a dictionary file, read when first needed."""
    return _Cached(lambda: read_lexicon(path, max_word_length=max_word_length, min_frequency=min_frequency))


def jieba_lexicon(max_word_length: int = 8, min_frequency: float = 0.0) -> Callable[[], Lexicon]:
    """spacy-globalpointer.jieba_lexicon.v1: the dictionary of the installed `jieba` package
    (`pip install jieba`, or this package's `lexicon` extra), read when first needed."""

    def load() -> Lexicon:
        try:
            import jieba
        except ImportError:
            raise ImportError(
                "spacy-globalpointer.jieba_lexicon.v1 reads the dictionary of the jieba package, which "
                "is not installed: pip install 'spacy-globalpointer[lexicon]' (or pip install jieba)"
            ) from None
        return read_lexicon(Path(jieba.__file__).parent / "dict.txt", max_word_length=max_word_length,
                            min_frequency=min_frequency)

    return _Cached(load)


class _Cached:
    """Loads the lexicon when first called and keeps it for every later call (each batch)."""

    def __init__(self, load: Callable[[], Lexicon]):
        self.load = load
        self.words: Optional[Lexicon] = None

    def __call__(self) -> Lexicon:
        if self.words is None:
            self.words = self.load()
        return self.words


def match_sets(
    words: List[str], lexicon: Lexicon, max_word_length: int
) -> List[Tuple[int, int, str]]:
    """Every lexicon word in the doc as (token, set index, word): the word begins (0), continues
    (1), ends (2) or is (3) that token. A word is a run of whole tokens, joined without spaces."""
    matches = []
    n = len(words)
    for start in range(n):
        text = ""
        for end in range(start, min(n, start + max_word_length)):
            text += words[end]
            if len(text) > max_word_length:
                break
            if text not in lexicon:
                continue
            if end == start:
                matches.append((start, 3, text))
            else:
                matches.append((start, 0, text))
                matches.extend((middle, 1, text) for middle in range(start + 1, end))
                matches.append((end, 2, text))
    return matches


def _weights(frequencies: numpy.ndarray, weighting: str) -> numpy.ndarray:
    if weighting == "log":
        return numpy.log1p(frequencies)
    if weighting == "frequency":
        return frequencies
    return numpy.ones_like(frequencies)


def soft_lexicon_features(
    docs: List[Doc], lexicon: Lexicon, max_word_length: int, weighting: str
) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """For the batch: (rows, ids, weights), one entry per (token, set, word): rows index
    token * 4 + set over the batch's tokens, ids are the words' hashes (a set's NONE word where
    it is empty), weights are 4 z(w) / Z with Z summed over the token's four sets."""
    rows, ids, weights = [], [], []
    none_ids = [get_string_id(f"-SOFTLEXICON-NONE-{name}-") for name in SETS]
    offset = 0
    for doc in docs:
        matches = match_sets([t.text for t in doc], lexicon, max_word_length)
        n = len(doc)
        if matches:
            tokens = numpy.array([m[0] for m in matches], dtype="int64")
            sets = numpy.array([m[1] for m in matches], dtype="int64")
            z = _weights(numpy.array([lexicon[m[2]] for m in matches], dtype="float64"), weighting)
            total = numpy.zeros(n, dtype="float64")
            numpy.add.at(total, tokens, z)
            rows.append((offset + tokens) * 4 + sets)
            ids.append(numpy.array([get_string_id(m[2]) for m in matches], dtype="uint64"))
            weights.append(4.0 * z / numpy.maximum(total[tokens], 1e-12))
        filled = numpy.zeros((n, 4), dtype=bool)
        if matches:
            filled[tokens, sets] = True
        empty_tokens, empty_sets = numpy.nonzero(~filled)
        rows.append((offset + empty_tokens) * 4 + empty_sets)
        ids.append(numpy.array(none_ids, dtype="uint64")[empty_sets])
        weights.append(numpy.ones(len(empty_tokens), dtype="float64"))
        offset += n
    if not rows:
        return numpy.zeros(0, "int64"), numpy.zeros(0, "uint64"), numpy.zeros(0, "float32")
    return (numpy.concatenate(rows).astype("int64"), numpy.concatenate(ids).astype("uint64"),
            numpy.concatenate(weights).astype("float32"))


def soft_lexicon(
    width: int, lexicon: Callable[[], Lexicon], *, rows: int = 50000, max_word_length: int = 8,
    weighting: str = "log", seed: int = 40,
) -> Model[List[Doc], List[Floats2d]]:
    """Per doc, a (tokens, 4 * width) array: the B, M, E and S set vectors of each token."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if max_word_length < 1:
        raise ValueError(f"max_word_length must be >= 1, got {max_word_length}")
    embed = HashEmbed(width, rows, column=0, seed=seed, dropout=0.0)

    def forward(model: Model, docs: List[Doc], is_train: bool):
        ops = model.ops
        lengths = [len(doc) for doc in docs]
        total = sum(lengths)
        entry_rows, ids, weights = soft_lexicon_features(docs, lexicon(), max_word_length, weighting)
        if len(ids):
            vectors, backprop_embed = embed(ops.asarray(ids.reshape(-1, 1), dtype="uint64"), is_train)
        else:
            vectors, backprop_embed = ops.alloc2f(0, width), None
        rows_ = ops.asarray(entry_rows, dtype="int32")
        weights_ = ops.asarray(weights.reshape(-1, 1), dtype="float32")
        table = ops.alloc2f(total * 4, width)
        if len(ids):
            ops.scatter_add(table, rows_, vectors * weights_)
        output = table.reshape(total, 4 * width)
        starts = numpy.cumsum([0] + lengths)
        outputs = [output[starts[i] : starts[i + 1]] for i in range(len(docs))]

        def backprop(d_outputs: List[Floats2d]) -> List[Doc]:
            if backprop_embed is not None and total:
                d_table = ops.xp.concatenate(d_outputs).reshape(total * 4, width)
                backprop_embed(d_table[rows_] * weights_)
            return []

        return outputs, backprop

    return Model(
        "soft_lexicon", forward, init=lambda model, X=None, Y=None: embed.initialize(), layers=[embed], dims={"nO": 4 * width},
        attrs={"max_word_length": max_word_length, "weighting": weighting},
    )


def build_soft_lexicon_embed(
    width: int,
    embed: Model[List[Doc], List[Floats2d]],
    lexicon: Callable[[], Lexicon],
    *,
    lexicon_width: int = 32,
    lexicon_rows: int = 50000,
    max_word_length: int = 8,
    weighting: str = "log",
) -> Model[List[Doc], List[Floats2d]]:
    """spacy-globalpointer.SoftLexiconEmbed.v1: `embed` (e.g. NgramHashEmbed, of `width`
    columns) with each token's four SoftLexicon set vectors (`lexicon_width` each) concatenated
    and mixed back to `width` by a Maxout layer."""
    words = soft_lexicon(lexicon_width, lexicon, rows=lexicon_rows, max_word_length=max_word_length,
                         weighting=weighting)
    return chain(
        _concatenate_lists(embed, words),
        list2ragged(),
        with_array(Maxout(width, nP=3, dropout=0.0, normalize=True)),
        ragged2list(),
    )


def _concatenate_lists(*layers: Model) -> Model[List[Doc], List[Floats2d]]:
    """Run each layer on the docs and concatenate their per-doc outputs column-wise."""

    def forward(model: Model, docs: List[Doc], is_train: bool):
        results = [layer(docs, is_train) for layer in model.layers]
        widths = [result[0][0].shape[1] if docs else 0 for result in results]
        outputs = [model.ops.xp.hstack([result[0][i] for result in results]) for i in range(len(docs))]

        def backprop(d_outputs: List[Floats2d]) -> List[Doc]:
            start = 0
            for (_, callback), width in zip(results, widths):
                callback([d[:, start : start + width] for d in d_outputs])
                start += width
            return []

        return outputs, backprop

    return Model("concatenate_lists", forward, init=_init_layers, layers=list(layers))


def _init_layers(model: Model, X: Optional[List[Doc]] = None, Y=None) -> None:
    for layer in model.layers:
        layer.initialize(X=X)
