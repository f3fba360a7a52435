"""The one sweep grammar (KEY=V1,V2,...): the same values, quoting and errors in `bptrain sweep`
and `bptrain grad-inspect`."""

from __future__ import annotations

import json

import pytest

from bptrain.errors import EXIT_USAGE, UserError
from bptrain.search_space import Axis, grid, is_multi_valued, parse_axes, parse_axis, split_values


def test_commas_split_only_at_the_top_level():
    assert split_values("rnn,lstm,gru") == ["rnn", "lstm", "gru"]
    assert split_values(" [64,64] , [128] ") == ["[64,64]", "[128]"]
    assert split_values("{a: 1, b: 2},{a: 3}") == ["{a: 1, b: 2}", "{a: 3}"]
    assert split_values("'a,b',\"c,d\",e") == ["'a,b'", '"c,d"', "e"]
    # parentheses too: a distribution such as loguniform(1e-4,1e-1) stays one value
    assert split_values("loguniform(1e-4,1e-1),0.5") == ["loguniform(1e-4,1e-1)", "0.5"]


def test_an_axis_is_a_dotted_key_and_its_values():
    axis = parse_axis("model.hidden=[8],[16,16]")
    assert axis == Axis("model.hidden", ("[8]", "[16,16]"))
    assert axis.overrides == ["model.hidden=[8]", "model.hidden=[16,16]"]


def test_the_grid_is_every_combination_first_axis_slowest():
    axes = parse_axes(["a.b=1,2", "c=x,y"])
    assert grid(axes) == [("a.b=1", "c=x"), ("a.b=1", "c=y"), ("a.b=2", "c=x"), ("a.b=2", "c=y")]
    assert grid([]) == [()]


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("model.cell", "expected KEY=V1,V2"),
        ("=1,2", "expected KEY=V1,V2"),
        ("model..cell=1", "expected KEY=V1,V2"),
        ("a=", "empty"),
        ("a=1,,2", "empty"),
        ("a=[1,2", "unclosed bracket"),
        ("a='1,2", "unclosed '"),
        ("a=1),2", "unmatched"),
    ],
)
def test_malformed_axes_say_what_is_wrong(argument, message):
    with pytest.raises(UserError, match=message):
        parse_axis(argument)


def test_a_key_given_twice_is_an_error():
    with pytest.raises(UserError, match="given twice"):
        parse_axes(["a=1,2", "a=3"])


def test_only_several_values_make_an_axis_of_a_plain_argument():
    assert is_multi_valued("a=1,2")
    assert not is_multi_valued("a=1")
    assert not is_multi_valued("model.hidden=[64,64]")
    assert not is_multi_valued("a='x,y'")
    assert not is_multi_valued("a=[1,2")  # malformed: left to load_config's error


# --- through the CLI: both commands read the same arguments the same way ---


@pytest.fixture
def tiny(write_config):
    return write_config({"model": {"hidden": [8]}})


def test_sweep_keeps_quoted_commas_in_one_value(cli, tiny, tmp_path):
    # Both values fail validation, so nothing trains: the table still names both variants.
    result = cli("sweep", tiny, "optimizer.lr='0.1,2',-1")
    assert result.exit_code == 1, result.output
    rows = json.loads((tmp_path / "runs" / "tiny-sweep" / "sweep.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["optimizer.lr='0.1,2'", "optimizer.lr=-1"]
    assert all(r["status"] == "failed" for r in rows)


def test_grad_inspect_takes_the_sweep_syntax_as_arguments(cli, tiny, tmp_path):
    out = tmp_path / "inspect.json"
    result = cli(
        "grad-inspect", tiny, "model.activation=relu,tanh", "model.hidden=[8],[4,4]",
        "optimizer.lr=0.1", "--batches", "1", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = json.loads(out.read_text())["sweep"]
    assert [item["label"] for item in sweep] == [
        "activation=relu hidden=[8]",
        "activation=relu hidden=[4,4]",
        "activation=tanh hidden=[8]",
        "activation=tanh hidden=[4,4]",
    ]
    assert sweep[1]["overrides"] == ["model.activation=relu", "model.hidden=[4,4]"]
    assert [len(item["report"]["layers"]) for item in sweep] == [2, 3, 2, 3]
    assert "deprecated" not in result.output


def test_grad_inspect_sweep_option_still_works_with_a_deprecation_note(cli, tiny, tmp_path):
    out = tmp_path / "inspect.json"
    result = cli(
        "grad-inspect", tiny, "--sweep", "model.activation=relu,tanh", "--batches", "1",
        "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--sweep is deprecated" in result.output
    assert "grad-inspect" in result.output and "model.activation=relu,tanh" in result.output
    labels = [item["label"] for item in json.loads(out.read_text())["sweep"]]
    assert labels == ["activation=relu", "activation=tanh"]


@pytest.mark.parametrize("command", ["sweep", "grad-inspect"])
def test_both_commands_reject_a_malformed_axis_the_same_way(cli, tiny, command):
    result = cli(command, tiny, "model.activation=relu,,tanh")
    assert result.exit_code == EXIT_USAGE
    assert "sweep axis 'model.activation=relu,,tanh': a value is empty" in result.output
    assert "Traceback" not in result.output
