"""`head_optimizer`: the head learns with an optimizer of its own, the tok2vec with the
training optimizer."""
import numpy
import pytest
import spacy
from thinc.api import SGD, Adam

from .tiny_pipeline import EN_DATA, SMALL_MODEL, build_tiny, make_examples


def _weights(model):
    """Copies of every parameter of a model tree, torch shims included."""
    out = [node.get_param(name).copy() for node in model.walk() for name in node.param_names]
    for node in model.walk():
        for shim in node.shims:
            out += [p.detach().numpy().copy() for p in shim._model.parameters()]
    return out


def _changed(before, after):
    return any(not numpy.array_equal(a, b) for a, b in zip(before, after))


def _pipeline(head_optimizer):
    nlp = spacy.blank("en")
    config = {"model": SMALL_MODEL}
    if head_optimizer is not None:
        config["head_optimizer"] = head_optimizer
    gp = nlp.add_pipe("global_pointer", config=config)
    examples = make_examples(nlp, EN_DATA)
    nlp.initialize(lambda: examples)
    return nlp, gp, examples


@pytest.mark.parametrize("frozen", ["head", "tok2vec"])
def test_head_and_tok2vec_follow_their_own_optimizers(frozen):
    # A rate of 0 freezes what that optimizer updates and nothing else.
    head_rate, main_rate = (0.0, 0.01) if frozen == "head" else (0.01, 0.0)
    head_opt = {"@optimizers": "SGD.v1", "learn_rate": head_rate, "L2": 0.0, "grad_clip": 0.0, "use_averages": False}
    nlp, gp, examples = _pipeline(head_opt)
    head, tok2vec = gp.model.get_ref("head"), gp.model.get_ref("tok2vec")
    head_before, tok2vec_before = _weights(head), _weights(tok2vec)
    nlp.update(examples, sgd=SGD(main_rate, L2=0.0, grad_clip=0.0))
    assert _changed(head_before, _weights(head)) is (frozen != "head")
    assert _changed(tok2vec_before, _weights(tok2vec)) is (frozen != "tok2vec")


def test_head_optimizer_schedule_steps_once_per_update():
    head_opt = {
        "@optimizers": "Adam.v1",
        "learn_rate": {"@schedules": "warmup_linear.v1", "warmup_steps": 4, "total_steps": 20, "initial_rate": 1e-3},
        "use_averages": False,
    }
    nlp, gp, examples = _pipeline(head_opt)
    optimizer = nlp.create_optimizer()
    rates = []
    for _ in range(3):
        rates.append(gp.head_optimizer.learn_rate)
        nlp.update(examples, sgd=optimizer)
    assert rates == pytest.approx([0.0, 2.5e-4, 5e-4])


def test_without_head_optimizer_the_training_optimizer_updates_everything():
    nlp, gp, examples = _pipeline(None)
    assert gp.head_optimizer is None
    head_before = _weights(gp.model.get_ref("head"))
    nlp.update(examples, sgd=Adam(0.01))
    assert _changed(head_before, _weights(gp.model.get_ref("head")))


def test_head_optimizer_learns_and_round_trips(tmp_path):
    head_opt = {"@optimizers": "Adam.v1", "learn_rate": 0.01, "use_averages": True}
    nlp, losses = build_tiny(config={"head_optimizer": head_opt}, steps=40)[0::2]
    assert losses[-1] < 0.2 * losses[0]
    gp = nlp.get_pipe("global_pointer")
    assert gp.head_optimizer.averages  # kept, and used by use_params (evaluation, model-best)
    # spaCy's protocol: Language.use_params advances each pipe's use_params with next().
    context = gp.use_params({})
    next(context)
    averaged = gp.predict([nlp.make_doc(EN_DATA[0][0])]).doc(0)
    next(context, None)
    current = gp.predict([nlp.make_doc(EN_DATA[0][0])]).doc(0)
    assert not numpy.allclose(averaged, current)
    nlp.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    assert loaded.get_pipe("global_pointer").head_optimizer is not None
    reloaded = loaded.get_pipe("global_pointer").predict([loaded.make_doc(EN_DATA[0][0])]).doc(0)
    numpy.testing.assert_allclose(reloaded, current, rtol=1e-5, atol=1e-5)


def test_spacy_train_evaluates_and_saves_the_averaged_weights(tmp_path):
    """`spacy train` with use_averages = true calls nlp.use_params(optimizer.averages) to
    evaluate and save model-best: the head's averaged weights are swapped in, then restored."""
    nlp, gp, examples = _pipeline(None)
    optimizer = Adam(0.01, use_averages=True)
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    assert optimizer.averages
    doc = nlp.make_doc(EN_DATA[0][0])
    current = gp.predict([doc]).doc(0)
    with nlp.use_params(optimizer.averages):
        averaged = gp.predict([doc]).doc(0)
        nlp.to_disk(tmp_path / "best")
    assert not numpy.allclose(averaged, current)
    numpy.testing.assert_array_equal(gp.predict([doc]).doc(0), current)
    loaded = spacy.load(tmp_path / "best").get_pipe("global_pointer")
    numpy.testing.assert_allclose(loaded.predict([doc]).doc(0), averaged, rtol=1e-5, atol=1e-5)
