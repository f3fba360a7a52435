"""The built-in cnn, cnn1d, rnn and transformer: shapes, outputs that follow the targets, init,
activation checkpointing, and the errors a mismatched model/data pair gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bptrain.config import validate_config
from bptrain.data import DataSpec
from bptrain.errors import UserError
from bptrain.models import build_model, output_shape


def model_cfg(**model):
    return validate_config({"data": {"source": "spirals"}, "model": model}).model


def cls_spec(input_shape, classes=3, target_shape=(), token_range=None):
    return DataSpec("classification", input_shape, classes, target_shape, token_range)


def reg_spec(input_shape, target_shape=(1,)):
    return DataSpec("regression", input_shape, None, target_shape)


@pytest.mark.parametrize("size", [8, 64])
@pytest.mark.parametrize("residual", [False, True])
def test_cnn_defaults_fit_tiny_to_64px_images(size, residual):
    model = build_model(
        model_cfg(name="cnn", residual=residual), cls_spec((3, size, size), 10), "cross_entropy"
    )
    out = model(torch.randn(4, 3, size, size))
    assert out.shape == (4, 10)


def test_cnn_downsamples_only_while_the_resolution_allows():
    pools = lambda m: sum(isinstance(b, nn.MaxPool2d) for b in m.blocks)  # noqa: E731
    small = build_model(
        model_cfg(name="cnn", channels=[8, 8, 8, 8]), cls_spec((1, 8, 8)), "cross_entropy"
    )
    large = build_model(
        model_cfg(name="cnn", channels=[8, 8, 8, 8]), cls_spec((1, 64, 64)), "cross_entropy"
    )
    assert pools(small) == 2  # 8 -> 4 -> 2, then no further halving
    assert pools(large) == 3


def test_cnn_accepts_single_channel_images_without_channel_axis():
    model = build_model(model_cfg(name="cnn"), cls_spec((8, 8)), "cross_entropy")
    assert model(torch.randn(2, 8, 8)).shape == (2, 3)


def test_cnn1d_reads_time_major_sequences_and_channels_first_signals():
    spec = reg_spec((30, 4), (2,))
    assert build_model(model_cfg(name="cnn1d"), spec, "mse")(torch.randn(5, 30, 4)).shape == (5, 2)
    cf = build_model(model_cfg(name="cnn1d", channels_first=True), reg_spec((4, 30), (2,)), "mse")
    assert cf(torch.randn(5, 4, 30)).shape == (5, 2)
    assert cf.blocks[0][0].in_channels == 4


def test_cnn_on_feature_vectors_is_a_clear_error():
    with pytest.raises(UserError, match="cnn needs images"):
        build_model(model_cfg(name="cnn"), cls_spec((64,)), "cross_entropy")
    with pytest.raises(UserError, match="cnn1d needs sequences"):
        build_model(model_cfg(name="cnn1d"), cls_spec((3, 8, 8)), "cross_entropy")


@pytest.mark.parametrize(
    ("cell", "bidirectional"), [("rnn", False), ("lstm", True), ("gru", False)]
)
def test_rnn_many_to_one_output_follows_the_targets(cell, bidirectional):
    cfg = model_cfg(
        name="rnn", cell=cell, bidirectional=bidirectional, num_layers=2, dropout=0.1, hidden_size=8
    )
    assert build_model(cfg, cls_spec((12, 3), 5), "cross_entropy")(torch.randn(4, 12, 3)).shape == (
        4,
        5,
    )
    regressor = build_model(cfg, reg_spec((12, 3), (2, 3)), "mse")
    assert regressor(torch.randn(4, 12, 3)).shape == (4, 2, 3)


def test_rnn_bidirectional_last_pool_sees_both_ends():
    model = build_model(
        model_cfg(name="rnn", cell="gru", bidirectional=True), reg_spec((10, 1)), "mse"
    )
    x = torch.randn(1, 10, 1, requires_grad=True)
    model(x).sum().backward()
    # The forward direction's summary depends on the last step, the backward one's on the first.
    assert x.grad[0, 0].abs().sum() > 0 and x.grad[0, -1].abs().sum() > 0


def test_rnn_many_to_many_per_step_labels_and_values():
    per_step = build_model(
        model_cfg(name="rnn"), cls_spec((9, 2), 4, target_shape=(9,)), "cross_entropy"
    )
    assert per_step(torch.randn(3, 9, 2)).shape == (3, 9, 4)
    values = build_model(model_cfg(name="rnn", output="sequence"), reg_spec((9, 2), (9,)), "mse")
    assert values(torch.randn(3, 9, 2)).shape == (3, 9)
    with pytest.raises(UserError, match="no step axis"):
        build_model(model_cfg(name="rnn", output="sequence"), reg_spec((9, 2), (1,)), "mse")


def test_rnn_is_causal_in_time_for_per_step_outputs():
    model = build_model(
        model_cfg(name="rnn", cell="lstm"), cls_spec((6, 1), 2, (6,)), "cross_entropy"
    )
    x = torch.randn(1, 6, 1)
    changed = x.clone()
    changed[0, 4] += 1.0
    before, after = model(x), model(changed)
    assert torch.equal(before[0, :4], after[0, :4]) and not torch.equal(before[0, 4:], after[0, 4:])


def test_token_models_embed_integer_ids():
    spec = cls_spec((7,), 3, token_range=10)
    for cfg in (model_cfg(name="rnn", vocab_size=10), model_cfg(name="transformer", vocab_size=10)):
        model = build_model(cfg, spec, "cross_entropy")
        assert isinstance(model.embed, nn.Embedding)
        assert model(torch.randint(0, 10, (2, 7))).shape == (2, 3)


def test_vocab_size_must_cover_the_token_ids_and_needs_integer_inputs():
    with pytest.raises(UserError, match="vocab_size=12"):
        build_model(
            model_cfg(name="transformer", vocab_size=10),
            cls_spec((7,), 3, token_range=12),
            "cross_entropy",
        )
    with pytest.raises(UserError, match="not non-negative integers"):
        build_model(model_cfg(name="rnn", vocab_size=10), cls_spec((7,), 3), "cross_entropy")


@pytest.mark.parametrize("pool", ["mean", "max", "last", "cls"])
def test_transformer_pooling_and_feature_inputs(pool):
    model = build_model(
        model_cfg(name="transformer", pool=pool, d_model=16, num_heads=2),
        reg_spec((11, 3), (2,)),
        "mse",
    )
    assert model(torch.randn(4, 11, 3)).shape == (4, 2)


def test_transformer_per_step_and_causal():
    cfg = model_cfg(name="transformer", d_model=16, num_heads=2, causal=True, dropout=0.0)
    model = build_model(
        cfg, cls_spec((8,), 5, target_shape=(8,), token_range=5), "cross_entropy"
    ).eval()
    x = torch.randint(0, 5, (1, 8))
    changed = x.clone()
    changed[0, 5] = (x[0, 5] + 1) % 5
    before, after = model(x), model(changed)
    assert before.shape == (1, 8, 5)
    assert torch.allclose(before[0, :5], after[0, :5], atol=1e-6)
    assert not torch.allclose(before[0, 5:], after[0, 5:])


def test_transformer_config_checks_heads_and_length():
    with pytest.raises(UserError, match="num_heads"):
        model_cfg(name="transformer", d_model=10, num_heads=4)
    with pytest.raises(UserError, match="max_len"):
        build_model(model_cfg(name="transformer", max_len=8), reg_spec((9, 1)), "mse")


def test_nll_models_end_in_log_probabilities():
    for cfg, spec, x in (
        (model_cfg(name="cnn"), cls_spec((1, 8, 8)), torch.randn(2, 1, 8, 8)),
        (model_cfg(name="rnn"), cls_spec((5, 2)), torch.randn(2, 5, 2)),
        (model_cfg(name="transformer", d_model=16), cls_spec((5, 2)), torch.randn(2, 5, 2)),
    ):
        out = build_model(cfg, spec, "nll")(x)
        assert torch.allclose(out.exp().sum(-1), torch.ones(2), atol=1e-5)


def test_per_step_binary_output_shape():
    assert output_shape(cls_spec((6, 1), 2, (6,)), "bce_with_logits") == (6, 1)


def test_recurrent_init_orthogonal_hidden_weights_and_forget_bias_one():
    model = build_model(
        model_cfg(name="rnn", cell="lstm", hidden_size=8, init="xavier_uniform"),
        reg_spec((5, 2)),
        "mse",
    )
    w_hh, b_ih = model.rnn.weight_hh_l0, model.rnn.bias_ih_l0
    for gate in w_hh.detach().split(
        8
    ):  # orthogonal_ makes the (32 x 8) matrix's columns orthonormal
        assert gate.shape == (8, 8)
    assert torch.allclose(w_hh.T @ w_hh, torch.eye(8), atol=1e-5)
    assert torch.equal(b_ih[8:16], torch.ones(8)) and b_ih[:8].abs().sum() == 0


def _grads(model, x, y, loss_fn):
    torch.manual_seed(0)
    model.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("model", "spec", "x"),
    [
        ({"name": "mlp", "hidden": [16, 16, 16]}, cls_spec((6,)), torch.randn(8, 6)),
        (
            {"name": "cnn", "channels": [4, 8], "residual": True, "norm": "layernorm"},
            cls_spec((1, 8, 8)),
            torch.randn(8, 1, 8, 8),
        ),
        ({"name": "cnn1d", "channels": [4, 8]}, cls_spec((10, 2)), torch.randn(8, 10, 2)),
        (
            {"name": "transformer", "d_model": 16, "num_heads": 2, "dropout": 0.0},
            cls_spec((10, 2)),
            torch.randn(8, 10, 2),
        ),
    ],
)
def test_activation_checkpointing_gives_the_same_loss_and_gradients(model, spec, x):
    y = torch.randint(0, 3, (8,))
    torch.manual_seed(0)
    plain = build_model(model_cfg(**model), spec, "cross_entropy")
    torch.manual_seed(0)
    recomputed = build_model(
        model_cfg(**model), spec, "cross_entropy", activation_checkpointing=True
    )
    recomputed.load_state_dict(plain.state_dict())
    loss_a, grads_a = _grads(plain, x, y, nn.functional.cross_entropy)
    loss_b, grads_b = _grads(recomputed, x, y, nn.functional.cross_entropy)
    assert torch.allclose(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_activation_checkpointing_saves_activation_memory():
    """Count the bytes autograd keeps for the backward pass (saved-tensor hooks): a direct,
    allocator-independent measure of activation memory."""
    spec = cls_spec((3, 16, 16), 10)
    cfg = model_cfg(name="cnn", channels=[8, 16], blocks_per_stage=3, residual=True)
    x = torch.randn(4, 3, 16, 16)

    def saved_bytes(checkpointing: bool) -> int:
        model = build_model(cfg, spec, "cross_entropy", activation_checkpointing=checkpointing)
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).sum()
        loss.backward()
        return sum(seen.values())

    full, checkpointed = saved_bytes(False), saved_bytes(True)
    assert checkpointed < full / 3


def test_activation_checkpointing_refuses_models_it_cannot_apply_to():
    with pytest.raises(UserError, match="activation_checkpointing"):
        build_model(model_cfg(name="rnn"), reg_spec((5, 1)), "mse", activation_checkpointing=True)


def test_model_names_select_their_variant_and_reject_foreign_keys():
    assert model_cfg(name="cnn1d").name == "cnn1d"
    with pytest.raises(UserError, match="unknown key 'cell'"):
        model_cfg(name="cnn", cell="lstm")
    with pytest.raises(UserError, match=r"cnn, cnn1d, rnn, transformer|expected one of"):
        model_cfg(name="resnet")


def test_freeze_and_init_from_on_a_built_in_cnn(tmp_path):
    from bptrain.transfer import freeze, init_from

    model = build_model(model_cfg(name="cnn", channels=[4]), cls_spec((1, 8, 8)), "cross_entropy")
    freeze(model, ["blocks.0.*"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("blocks.0.") for n in frozen)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pt")
    again = build_model(model_cfg(name="cnn", channels=[4]), cls_spec((1, 8, 8)), "cross_entropy")
    init_from(again, tmp_path / "w.pt", strict=True)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    with pytest.raises(UserError, match="matches no parameter"):
        freeze(again, ["nothing.*"])
