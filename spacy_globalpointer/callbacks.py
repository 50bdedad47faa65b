"""spaCy callbacks that configs can name.

`spacy-globalpointer.cache_msgpack_decoders.v1` speeds up reading DocBin corpora. Every
`srsly.msgpack_loads` (three per doc of a DocBin) asks srsly's registry of msgpack decoders for
all its entries, and catalogue answers by filtering every installed package's entry points and
every function registered in the process (spaCy registers thousands): about 1 ms per doc, 11 s
for one pass over CLUENER's 10,748 training docs on this project's machine, against 0.4 s with
the answer kept. `spacy train` reads the training corpus several times before its first step
(spacy-transformers' and global_pointer's initialize, then the loop, which lists the whole
corpus) and the dev corpus at every evaluation; on a GPU, where a step takes milliseconds, that
reading is most of the time to the first evaluation.
"""
from typing import Any, Callable, Dict, Optional

from spacy.util import registry


class _KeptGetAll:
    """A registry's get_all() whose answer is kept until a function is registered anywhere.

    catalogue reads the installed entry points once, when it is imported, so they cannot change;
    what can change is the process's own registrations, and any of them grows catalogue.REGISTRY.
    """

    def __init__(self, get_all: Callable[[], Dict[str, Any]]):
        self.get_all = get_all
        self.size: Optional[int] = None
        self.kept: Dict[str, Any] = {}

    def __call__(self) -> Dict[str, Any]:
        import catalogue

        size = len(catalogue.REGISTRY)
        if size != self.size:
            self.kept, self.size = self.get_all(), size
        return dict(self.kept)


def keep_msgpack_decoders() -> None:
    """Keep the answers of srsly's msgpack decoder and encoder registries (once per process)."""
    import srsly.msgpack

    for lookup in (srsly.msgpack.msgpack_decoders, srsly.msgpack.msgpack_encoders):
        if not isinstance(lookup.get_all, _KeptGetAll):
            lookup.get_all = _KeptGetAll(lookup.get_all)


@registry.callbacks("spacy-globalpointer.cache_msgpack_decoders.v1")
def make_cache_msgpack_decoders() -> Callable[[Any], Any]:
    """A `[nlp.before_creation]` callback: reading DocBins gets faster for the rest of the
    process (the same docs; see the module's docstring). Returns the Language class unchanged."""

    def before_creation(lang_cls: Any) -> Any:
        keep_msgpack_decoders()
        return lang_cls

    return before_creation
