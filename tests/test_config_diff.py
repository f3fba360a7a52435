"""What differs between run configs: one implementation behind `bptrain runs` and `bptrain report`."""

from __future__ import annotations

from bptrain.config_diff import differences, flatten


def test_flatten_gives_dotted_keys_and_keeps_lists_and_empty_sections_whole():
    config = {"model": {"hidden": [64, 64], "kind": "mlp"}, "callbacks": {}, "seed": 0}
    assert flatten(config) == {
        "model.hidden": [64, 64],
        "model.kind": "mlp",
        "callbacks": {},
        "seed": 0,
    }


def test_differences_lists_each_runs_value_in_first_seen_key_order():
    a = flatten({"optimizer": {"lr": 0.1, "name": "sgd"}, "seed": 0, "extra": {"b": 1, "a": 2}})
    b = flatten({"optimizer": {"lr": 0.01, "name": "sgd"}, "seed": 0, "extra": {"a": 2, "b": 1}})
    c = flatten({"optimizer": {"lr": 0.1, "name": "sgd"}, "seed": 0, "extra": {}, "new": None})
    assert differences([a, b]) == {"optimizer.lr": [0.1, 0.01]}
    assert differences([a, c]) == {
        "extra.b": [1, None],  # a key missing in a run differs
        "extra.a": [2, None],
        "extra": [None, {}],
        "new": [None, None],  # None and missing are not the same
    }
    assert differences([a]) == {} and differences([]) == {}


def test_nan_and_dict_order_do_not_make_a_difference():
    assert differences([{"x": float("nan"), "d": {"a": 1, "b": 2}}] * 2) == {}
    assert differences([{"d": {"a": 1, "b": 2}}, {"d": {"b": 2, "a": 1}}]) == {}
