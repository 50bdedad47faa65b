"""benchmarks/nested_errors.py: the cause of each missed gold span, on hand-made spans."""

from .conftest import REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "nested_errors.py"
nested_errors = load_benchmark("nested_errors")


def test_each_cause_of_a_miss():
    cause = nested_errors.cause
    gold = (2, 5, "protein")
    assert cause(gold, {(2, 5, "protein"), (0, 1, "DNA")}) is None
    assert cause(gold, {(2, 5, "DNA")}) == "other_label"
    # The outer span of the same label predicted in the inner one's place shares its end.
    assert cause(gold, {(0, 5, "protein")}) == "one_boundary"
    assert cause(gold, {(2, 4, "protein")}) == "one_boundary"
    assert cause(gold, {(3, 7, "protein")}) == "overlap"
    # A neighbour that does not touch it, or an overlapping span of another label, is nothing.
    assert cause(gold, {(5, 7, "protein"), (0, 3, "DNA")}) == "nothing"
    assert cause(gold, set()) == "nothing"
    # other_label is checked first: same tokens with another label, even beside a boundary error.
    assert cause(gold, {(2, 5, "DNA"), (2, 6, "protein")}) == "other_label"


def test_kinds_and_probability_bins():
    assert nested_errors.kind_of({"nested", "inner", "outer"}) == "inner"
    assert nested_errors.kind_of({"nested", "outer"}) == "outer"
    assert nested_errors.kind_of({"flat"}) == "flat"
    assert nested_errors.probability_bin(0.0) == "[0, 0.01)"
    assert nested_errors.probability_bin(0.05) == "[0.01, 0.1)"
    assert nested_errors.probability_bin(0.3) == "[0.3, 0.5)"
    assert nested_errors.probability_bin(0.97) == "[0.5, 1)"
