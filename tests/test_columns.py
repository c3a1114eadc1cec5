"""The paper's two-device model parallelism equals the grouped single-device network.

The columns are `AlexNet2012(config, column=i)`: the same class and layer table as the whole
network. On the CPU: shapes, parameter split, checkpoint conversion, and the function (outputs,
gradients, one update) on one process and on two gloo processes. On GPUs (`gpu` marker; the two-GPU
tests skip with fewer): element-wise equality with the grouped network in fp32 and under bf16
autocast, repeated calls, fast layers in use, both column forms, and 200 training steps.
"""

from __future__ import annotations

import os

import pytest
from conftest import spawn_processes
import torch
import torch.nn.functional as F

from alexnet.errors import CheckpointError, ConfigError
from alexnet.models import build_model
from alexnet.models.alexnet2012 import AlexNet2012, AlexNet2012Config
from alexnet.optim import PaperSGD, param_groups
from alexnet.parallel.columns import DistributedColumnAlexNet, TwoDeviceAlexNet
from alexnet.parallel.convert import (load_named_optimizer_state, merge_state_dicts, named_optimizer_state,
                                      split_state_dict)

GROUPED_PARAMS = 60_965_224


def _grads(module) -> dict:
    return {k: p.grad for k, p in module.named_parameters()}


def _assert_state_close(actual: dict, expected: dict, **tol):
    assert list(actual) == list(expected)
    for key in expected:
        a, e = actual[key], expected[key]
        # allclose first: assert_close is several times slower on fc6's 19M values (2 CPU cores).
        if a.shape != e.shape or a.dtype != e.dtype or not torch.allclose(a, e, **tol):
            torch.testing.assert_close(a, e, msg=lambda m, key=key: f"{key}: {m}", **tol)


def test_columns_hold_the_halves_and_fc8_sits_on_column_0():
    grouped = build_model("alexnet2012")
    c0, c1 = AlexNet2012(AlexNet2012Config(), column=0), AlexNet2012(AlexNet2012Config(), column=1)
    n0, n1 = (sum(p.numel() for p in c.parameters()) for c in (c0, c1))
    assert (n0, n1) == (32_531_112, 28_434_112) and n0 + n1 == GROUPED_PARAMS
    shapes = {k: v.shape for k, v in grouped.state_dict().items()}
    half0, half1 = split_state_dict(grouped.state_dict())
    assert [k for k in c0.state_dict()] == list(shapes)                   # names mirror the grouped model
    assert {k: v.shape for k, v in c0.state_dict().items()} == {k: v.shape for k, v in half0.items()}
    assert {k: v.shape for k, v in c1.state_dict().items()} == {k: v.shape for k, v in half1.items()}
    assert c1.fc8 is None and "fc8.weight" not in half1
    assert c0.conv1.out_channels == 48 and c0.conv3.in_channels == 256 and c0.fc6.in_features == 9216
    # The column's normalisation window is its own channels only.
    assert c0.norm1.groups == 1 and c0.norm1.scale == grouped.norm1.scale


def test_one_layer_table_builds_both_forms_and_the_fast_layers_serve_both():
    """A column is built from the same table (alexnet.models.spec) with the same layer classes: what
    the whole network's fast form uses (space-to-depth conv1, fused ReLU+LRN, Triton pool), a column
    uses too; the grouped layers' fast choice (block-diagonal conv2) has no column counterpart."""
    whole = AlexNet2012(AlexNet2012Config(impl="fast"))
    column = AlexNet2012(AlexNet2012Config(impl="fast"), column=1)
    for name in ("conv1", "norm1", "pool1", "norm2", "pool2"):
        assert type(getattr(column, name)) is type(getattr(whole, name)), name
    assert type(whole).__name__ == type(column).__name__ == "AlexNet2012"
    assert type(whole.conv2).__name__ == "BlockDiagonalConv2d" and type(column.conv2) is torch.nn.Conv2d
    assert {n: s.init_std for n, s in column.specs.items()} == {n: s.init_std for n, s in whole.specs.items()
                                                                if n != "fc8"}
    code = AlexNet2012(AlexNet2012Config(recipe="cuda-convnet"), column=0)
    assert code.specs["conv4"].init_std == 0.03 and code.specs["conv4"].init_bias == 1.0
    assert abs(code.conv4.weight.std().item() - 0.03) < 0.002 and torch.all(code.conv4.bias == 1.0)


def test_the_one_column_config_has_no_column_form():
    with pytest.raises(ConfigError, match="column"):
        AlexNet2012(AlexNet2012Config(columns=1), column=0)
    with pytest.raises(ConfigError, match="columns 0 and 1"):
        AlexNet2012(AlexNet2012Config(), column=2)
    with pytest.raises(ConfigError, match="columns=2"):
        TwoDeviceAlexNet(AlexNet2012Config(columns=1), ("cpu", "cpu"))


def test_state_dicts_round_trip_between_the_forms():
    torch.manual_seed(0)
    grouped = build_model("alexnet2012", num_classes=10)
    sd = grouped.state_dict()
    sd0, sd1 = split_state_dict(sd)
    # Each half is its own storage: saving one column does not write the other's weights.
    assert sd0["fc6.weight"].untyped_storage().nbytes() == 2048 * 9216 * 4
    torch.testing.assert_close(sd0["conv2.weight"], sd["conv2.weight"][:128], rtol=0, atol=0)
    torch.testing.assert_close(sd1["fc7.bias"], sd["fc7.bias"][2048:], rtol=0, atol=0)
    _assert_state_close(merge_state_dicts(sd0, sd1), sd, rtol=0, atol=0)

    # grouped -> two devices -> grouped, through each form's own state dict.
    two = TwoDeviceAlexNet(grouped.config, ("cpu", "cpu"))
    two.load_state_dict(sd)                                    # a grouped checkpoint loads as is
    _assert_state_close(two.grouped_state_dict(), sd, rtol=0, atol=0)
    back = AlexNet2012(grouped.config)
    back.load_state_dict(two.grouped_state_dict())
    _assert_state_close(back.state_dict(), sd, rtol=0, atol=0)
    again = TwoDeviceAlexNet.from_grouped(back, ("cpu", "cpu"))
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    again.load_state_dict(two.state_dict())                    # its own `columns.i.` form too
    _assert_state_close(again.grouped_state_dict(), sd, rtol=0, atol=0)
    # DDP / torch.compile prefixes are dropped; foreign keys refused.
    _assert_state_close(split_state_dict({"module." + k: v for k, v in sd.items()})[1], sd1, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        split_state_dict({**sd, "classifier.1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="column 0's state dict first"):
        merge_state_dicts(sd1, sd0)


def test_two_devices_on_cpu_equal_the_grouped_network_outputs_loss_gradients_and_step():
    torch.manual_seed(1)
    grouped = build_model("alexnet2012").eval()      # dropout masks differ by design: compare in eval
    two = TwoDeviceAlexNet.from_grouped(grouped, ("cpu", "cpu"))
    assert not two.training
    x, y = torch.randn(2, 3, 224, 224) * 50, torch.tensor([3, 999])

    seen = []
    grouped.act7.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    logits = grouped(x)
    out = two(x)
    torch.testing.assert_close(out, logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(two.hidden(x), seen[0], rtol=1e-5, atol=1e-5)   # Figure 4's code
    loss_g, loss_t = F.cross_entropy(logits, y), F.cross_entropy(out, y)
    torch.testing.assert_close(loss_t, loss_g, rtol=1e-6, atol=1e-6)
    loss_g.backward()
    loss_t.backward()
    merged = merge_state_dicts(_grads(two.columns[0]), _grads(two.columns[1]))
    _assert_state_close(merged, _grads(grouped), rtol=1e-4, atol=1e-6)

    # One step of the paper's rule on each gives the same weights and velocities.
    opt_g, opt_t = PaperSGD(param_groups(grouped, "paper", 0.01)), PaperSGD(param_groups(two, "paper", 0.01))
    opt_g.step()
    opt_t.step()
    _assert_state_close(two.grouped_state_dict(), grouped.state_dict(), rtol=1e-5, atol=1e-6)
    velocity = merge_state_dicts(*(named_optimizer_state(c, opt_t) for c in two.columns))
    _assert_state_close(velocity, named_optimizer_state(grouped, opt_g), rtol=1e-4, atol=1e-8)
    # ... and the grouped velocities load into the columns' optimizer (resuming across forms).
    for column, half in zip(two.columns, split_state_dict(named_optimizer_state(grouped, opt_g))):
        load_named_optimizer_state(column, opt_t, half)
    assert torch.equal(opt_t.state[two.columns[1].fc6.weight]["velocity"],
                       opt_g.state[grouped.fc6.weight]["velocity"][2048:])


def test_torchrun_helpers_are_the_identity_without_torchrun(monkeypatch):
    from alexnet.parallel import distributed as d

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert d.init_from_env() is False
    ctx = d.DistributedContext.from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    t = torch.tensor([2.0])
    assert ctx.sum_(t) is t and t.item() == 2.0 and ctx.broadcast_object("x") == "x"
    ctx.barrier()
    ctx.cleanup()
    with pytest.raises(ConfigError, match="process group"):
        DistributedColumnAlexNet(AlexNet2012Config())


def test_two_devices_train_mode_drops_each_half_on_its_own():
    torch.manual_seed(2)
    two = TwoDeviceAlexNet(AlexNet2012Config(num_classes=5), ("cpu", "cpu")).train()
    assert [c.drop6.p for c in two.columns] == [0.5, 0.5]
    out = two(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in two.parameters())


# ----------------------------------------------------------------------------------------------
# Two gloo processes: one column each


def _distributed_worker(rank: int, store_path: str, recipe: str) -> None:
    from alexnet.parallel import distributed as d

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))   # as torchrun sets them
    assert d.init_from_env("gloo", timeout_s=60, init_method=f"file://{store_path}")
    try:
        ctx = d.DistributedContext.from_env("cpu")
        assert ctx.rank == rank and ctx.world_size == 2 and ctx.is_main == (rank == 0)
        assert ctx.sum_(torch.tensor([rank + 1.0])).item() == 3.0
        ctx.barrier()
        torch.manual_seed(0)                      # the same grouped model and batch on both ranks
        grouped = build_model("alexnet2012", recipe=recipe, dropout=0.0)
        initial = {k: v.clone() for k, v in grouped.state_dict().items()}
        x, y = torch.randn(2, 3, 224, 224) * 50, torch.tensor([5, 17])
        logits = grouped(x)
        loss_g = F.cross_entropy(logits, y)
        loss_g.backward()
        grad_half = split_state_dict(_grads(grouped))[rank]
        PaperSGD(param_groups(grouped, recipe, 0.01)).step()
        stepped_half = split_state_dict(grouped.state_dict())[rank]

        torch.manual_seed(100 + rank)             # a different init, then the grouped weights
        model = DistributedColumnAlexNet(AlexNet2012Config(recipe=recipe, dropout=0.0))
        model.load_grouped_state_dict(initial)
        assert model.rank == rank and model.is_root == (rank == 0)
        out = model(x)
        loss = model.loss(out, y)
        if rank == 0:
            torch.testing.assert_close(out, logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(loss, loss_g, rtol=1e-6, atol=1e-6)
        else:
            assert out.shape == () and loss is out
        shared = loss.detach().reshape(()).clone()
        torch.distributed.broadcast(shared, src=0)                # rank 0's loss is the run's
        torch.testing.assert_close(shared, loss_g.detach(), rtol=1e-6, atol=1e-6)
        opt = PaperSGD(param_groups(model, recipe, 0.01))
        opt.zero_grad()
        loss.backward()
        _assert_state_close(_grads(model), grad_half, rtol=1e-4, atol=1e-6)
        opt.step()
        _assert_state_close(model.state_dict(), stepped_half, rtol=1e-5, atol=1e-6)
        merged = model.grouped_state_dict()           # collective: rank 0 gets the whole model
        if rank == 0:
            _assert_state_close(merged, grouped.state_dict(), rtol=1e-5, atol=1e-6)
        else:
            assert merged is None
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_distributed_columns_on_two_gloo_processes_equal_the_grouped_network(tmp_path):
    """Rank r holds column r: forward, loss, gradients and one PaperSGD step equal the grouped
    model's (cuda-convnet recipe: its within-map norm, conv1 order and bias groups too)."""
    spawn_processes(_distributed_worker, (os.fspath(tmp_path / "store"), "cuda-convnet"))
