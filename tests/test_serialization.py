"""Safe loading: damaged, malicious or mismatched global_pointer model data fails
with a clear ValueError, and never executes pickled code."""
import pickle
import shutil
from pathlib import Path

import pytest
import spacy
import srsly
import torch
from .tiny_pipeline import EN_DATA, build_tiny, predicted_spans

TEXT = EN_DATA[0][0]


class WritesMarker:
    """Unpickling this runs code: it writes `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    nlp, _, _ = build_tiny("en", steps=10)
    path = tmp_path_factory.mktemp("saved") / "pipeline"
    nlp.to_disk(path)
    return path, predicted_spans(nlp, TEXT), nlp


@pytest.fixture
def copy(saved, tmp_path):
    path = tmp_path / "pipeline"
    shutil.copytree(saved[0], path)
    return path


def model_file(path: Path) -> Path:
    return path / "global_pointer" / "model"


def replace_torch_state(model_bytes: bytes, new_state: bytes) -> bytes:
    """Swap the torch state inside the Thinc model data for `new_state`."""
    msg = srsly.msgpack_loads(model_bytes)
    replaced = 0
    for shims in msg["shims"]:
        for i, shim_bytes in enumerate(shims):
            shim = srsly.msgpack_loads(shim_bytes)
            shim["state"] = new_state
            shims[i] = srsly.msgpack_dumps(shim)
            replaced += 1
    assert replaced == 1
    return srsly.msgpack_dumps(msg)


def test_round_trip(saved):
    path, expected, _ = saved
    nlp = spacy.load(path)
    assert predicted_spans(nlp, TEXT) == expected


def _component_config(nlp):
    config = dict(nlp.config["components"]["global_pointer"])
    config.pop("factory")
    return config


def test_round_trip_bytes(saved):
    _, expected, nlp = saved
    pipe_bytes = nlp.get_pipe("global_pointer").to_bytes()
    fresh = spacy.blank("en")
    fresh.add_pipe("global_pointer", config=_component_config(nlp))
    fresh.get_pipe("global_pointer").from_bytes(pipe_bytes)
    assert predicted_spans(fresh, TEXT) == expected


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_model_file_gives_a_clear_error(copy, keep):
    data = model_file(copy).read_bytes()
    keep = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    model_file(copy).write_bytes(data[:keep])
    with pytest.raises(ValueError, match=r"global_pointer.*(truncated|corrupted)"):
        spacy.load(copy)


def test_truncated_torch_state_gives_a_clear_error(copy):
    data = model_file(copy).read_bytes()
    msg = srsly.msgpack_loads(data)
    state = next(srsly.msgpack_loads(s)["state"] for shims in msg["shims"] for s in shims)
    model_file(copy).write_bytes(replace_torch_state(data, state[: len(state) // 2]))
    with pytest.raises(ValueError, match=r"global_pointer head weights.*truncated, corrupted"):
        spacy.load(copy)


def test_truncated_bytes_give_a_clear_error(saved):
    _, _, nlp = saved
    pipe_msg = srsly.msgpack_loads(nlp.get_pipe("global_pointer").to_bytes())
    pipe_msg["model"] = pipe_msg["model"][: len(pipe_msg["model"]) // 3]
    fresh = spacy.blank("en")
    pipe = fresh.add_pipe("global_pointer", config=_component_config(nlp))
    with pytest.raises(ValueError, match=r"global_pointer.*(truncated|corrupted)"):
        pipe.from_bytes(srsly.msgpack_dumps(pipe_msg))


def _raw_pickle(marker):
    return pickle.dumps(WritesMarker(str(marker)))


def _torch_save_zip(marker):
    import io

    buffer = io.BytesIO()
    torch.save({"proj.weight": WritesMarker(str(marker))}, buffer)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("make_payload", [_raw_pickle, _torch_save_zip], ids=["pickle", "torch-zip"])
def test_pickled_code_in_the_weights_is_not_executed(copy, tmp_path, make_payload):
    marker = tmp_path / "marker.txt"
    payload = make_payload(marker)
    # Control: the payload does run code when unpickled unsafely.
    control = tmp_path / "control.txt"
    if make_payload is _raw_pickle:
        pickle.loads(_raw_pickle(control))
    else:
        import io

        torch.load(io.BytesIO(_torch_save_zip(control)), weights_only=False)
    assert control.exists()
    data = model_file(copy).read_bytes()
    model_file(copy).write_bytes(replace_torch_state(data, payload))
    with pytest.raises(ValueError, match=r"not a weights-only state dict"):
        spacy.load(copy)
    assert not marker.exists()


def _edit_cfg(path, **changes):
    cfg_path = path / "global_pointer" / "cfg"
    cfg = srsly.read_json(cfg_path)
    cfg.update(changes)
    srsly.write_json(cfg_path, cfg)


def _edit_config(path, **dotted):
    config_path = path / "config.cfg"
    config = spacy.util.load_config(config_path)
    for dotted_key, value in dotted.items():
        section = config
        *parents, last = dotted_key.split(".")
        for parent in parents:
            section = section[parent]
        section[last] = value
    config.to_disk(config_path)


def test_extra_label_in_cfg_says_the_head_does_not_match(copy):
    labels = srsly.read_json(copy / "global_pointer" / "cfg")["labels"]
    _edit_cfg(copy, labels=labels + ["EXTRA"])
    with pytest.raises(ValueError, match=r"does not match.*nO.*saved 3.*4") as err:
        spacy.load(copy)
    assert "label" in str(err.value)


def test_fewer_labels_in_cfg_says_the_head_does_not_match(copy):
    _edit_cfg(copy, labels=["LOC", "PER"])
    with pytest.raises(ValueError, match=r"does not match.*nO.*saved 3.*2"):
        spacy.load(copy)


def test_different_width_says_the_head_does_not_match(copy):
    _edit_config(
        copy,
        **{
            "components.global_pointer.model.tok2vec.embed.width": 48,
            "components.global_pointer.model.tok2vec.encode.width": 48,
        },
    )
    with pytest.raises(ValueError, match=r"does not match.*nI.*saved 32.*48"):
        spacy.load(copy)


def test_different_head_size_says_the_head_does_not_match(copy):
    _edit_config(copy, **{"components.global_pointer.model.head_size": 8})
    with pytest.raises(ValueError, match=r"head does not match.*proj.weight"):
        spacy.load(copy)


def test_different_architecture_says_the_head_does_not_match(copy):
    _edit_config(
        copy,
        **{"components.global_pointer.model.@architectures": "spacy-globalpointer.EfficientGlobalPointer.v1"},
    )
    with pytest.raises(ValueError, match=r"does not match"):
        spacy.load(copy)


def test_empty_labels_in_cfg(copy):
    _edit_cfg(copy, labels=[])
    with pytest.raises(ValueError, match=r"no labels"):
        spacy.load(copy)


def test_span_evidence_trains_saves_and_reloads(tmp_path):
    """A head with span-internal evidence learns it (its zero-initialised weights move), and a
    saved pipeline reloads from its config with the same spans and scores."""
    from .tiny_pipeline import SMALL_MODEL, pipe_predictions

    model = {**SMALL_MODEL, "span_evidence": True}
    nlp, _, losses = build_tiny("en", steps=30, config={"model": model})
    assert losses[-1] < losses[0] / 2
    evidence = nlp.get_pipe("global_pointer").model.get_ref("head").shims[0]._model.evidence
    assert evidence.proj.weight.abs().sum() > 0
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.config["components"]["global_pointer"]["model"]["span_evidence"] is True
    texts = [text for text, _ in EN_DATA]
    assert pipe_predictions(loaded, texts) == pipe_predictions(nlp, texts)
    assert any(row["spans"] for row in pipe_predictions(loaded, texts))
