import json
import resource

import pytest

from hermetic_build.api import ActionFailed, TooManyJsonValues, json_values_at_most, loads_bounded


@pytest.mark.parametrize("document", [
    {"a": [1, 2, {"b": [], "c": {}}], "d": "x,y[z{"}, [[], [[]], {}], "", 0, {"paths": [{"_path": "a"}] * 50},
])
def test_the_count_is_at_least_the_values_json_makes(document):
    """Counted on bytes or text; a ',' '[' '{' inside a string only counts more."""
    def values(node) -> int:
        if isinstance(node, dict):
            return 1 + sum(values(v) for v in node.values())
        if isinstance(node, list):
            return 1 + sum(values(v) for v in node)
        return 1

    text = json.dumps(document)
    assert json_values_at_most(text) == json_values_at_most(text.encode()) >= values(document)
    assert loads_bounded(text.encode(), "x") == document


def test_a_document_of_more_values_is_refused_unparsed_naming_it():
    data = b"[" + b"[]," * 2_000_000 + b"[]]"  # 6 MiB that json.loads makes ~130 MiB of
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TooManyJsonValues, match=r"layers.json holds up to 4,000,003 JSON values, more than the 1,000,000"):
        loads_bounded(data, "layers.json", max_values=1_000_000)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB: nothing was parsed


def test_the_refusal_is_an_action_failure_and_a_value_error():
    """Callers that report JSON that does not parse (ValueError) report this one with their context;
    the others fail the action with its message."""
    with pytest.raises(ValueError):
        loads_bounded("[1,2,3]", "x", max_values=2)
    with pytest.raises(ActionFailed):
        loads_bounded("[1,2,3]", "x", max_values=2)
