"""cuda-convnet's CIFAR-10 nets (the paper's 13% / 11%): the locally connected layer, the nets as in
their configuration files, and their recipe (update rule, schedule, multiview test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.layers import LocallyConnected


@pytest.fixture(autouse=True)
def one_thread():
    """These small ops are fastest on one thread, and on a shared machine two threads can be 50x
    slower (OpenMP waits on cores other jobs hold)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# ============================================================================ locally connected layer


def local_loop(x, weight, bias, kernel, padding, stride, groups, out_size):
    """The definition, one output position and one group at a time: x (N, C, H, W) zero-padded,
    weight (positions, groups, Cg*k*k, Fg), bias (F, S, S)."""
    n, c, h, w = x.shape
    cg, fg = c // groups, weight.shape[-1]
    need = (out_size - 1) * stride + kernel
    xp = torch.zeros(n, c, max(need, h + 2 * padding), max(need, w + 2 * padding), dtype=x.dtype)
    xp[:, :, padding:padding + h, padding:padding + w] = x
    out = torch.zeros(n, groups * fg, out_size, out_size, dtype=x.dtype)
    for i in range(out_size):
        for j in range(out_size):
            for g in range(groups):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
                wij = weight[i * out_size + j, g]                  # (Cg*k*k, Fg), rows channel-major
                out[:, g * fg:(g + 1) * fg, i, j] = patch.reshape(n, -1) @ wij
    return out + bias


CASES = [  # in_channels, out_channels, size, kernel, padding, stride, groups
    (4, 6, 6, 3, 1, 1, 1),
    (6, 4, 7, 3, 0, 2, 2),     # stride 2 over 7: 1 + ceil(4/2) = 3 positions
    (3, 5, 8, 5, 2, 3, 1),     # 1 + ceil(7/3) = 4: the last window overhangs the padding
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_local_layer_equals_loop_forward_and_gradients(case, dtype):
    cin, cout, size, k, pad, stride, groups = case
    torch.manual_seed(0)
    m = LocallyConnected(cin, cout, size, k, padding=pad, stride=stride, groups=groups, init_std=0.3).to(dtype)
    with torch.no_grad():
        m.bias.normal_()
    assert m.out_size == 1 + math.ceil((2 * pad + size - k) / stride)
    x = torch.randn(3, cin, size, size, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w2, b2 = m.weight.detach().clone().requires_grad_(True), m.bias.detach().clone().requires_grad_(True)
    out, ref = m(x), local_loop(x2, w2, b2, k, pad, stride, groups, m.out_size)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, **tol)
    torch.testing.assert_close(m.weight.grad, w2.grad, **tol)
    torch.testing.assert_close(m.bias.grad, b2.grad, **tol)


def test_local_layer_gradcheck_float64():
    torch.manual_seed(1)
    m = LocallyConnected(2, 4, 5, 3, padding=1, stride=2, groups=2, init_std=0.5).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, m.weight.detach().requires_grad_(), m.bias.detach().requires_grad_()))


def test_local_layer_weights_are_not_shared():
    """Unlike a convolution, changing the filter at one position changes that position only."""
    m = LocallyConnected(3, 2, 4, 3, padding=1)
    x = torch.randn(1, 3, 4, 4)
    before = m(x).detach()
    with torch.no_grad():
        m.weight[5].add_(1.0)                       # position (1, 1)
    changed = (m(x).detach() - before).abs().sum(1)[0] > 0
    assert changed.sum() == 1 and changed[1, 1]


def test_local_layer_init_is_cuda_convnet_initw():
    torch.manual_seed(0)
    m = LocallyConnected(64, 64, 6, 3, padding=1, init_std=0.04)
    assert m.weight.shape == (36, 1, 64 * 9, 64) and m.bias.shape == (64, 6, 6)
    assert abs(m.weight.std().item() - 0.04) < 0.001 and abs(m.weight.mean().item()) < 0.001
    assert torch.count_nonzero(m.bias) == 0


def test_local_layer_bf16_autocast_cpu():
    torch.manual_seed(0)
    m = LocallyConnected(16, 8, 6, 3, padding=1, init_std=0.1)
    x = torch.randn(4, 16, 6, 6)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    out.float().sum().backward()
    assert torch.isfinite(m.weight.grad).all()


# ============================================================================ the nets


def _conv(cin, cout, k):
    return cin * k * k * cout + cout                          # shared biases: one per filter


def _local(cin, cout, k, positions):
    return positions * cin * k * k * cout + positions * cout  # unshared: per position, biases too


# By hand from layers-conv-local-{11,13}pct.cfg, 24x24 input: pools 24 -> 12 -> 6 (36 positions).
PARAMS_11PCT = _conv(3, 64, 5) + _conv(64, 64, 5) + _local(64, 64, 3, 36) + _local(64, 32, 3, 36) + 32 * 36 * 10 + 10
PARAMS_13PCT = _conv(3, 64, 5) + _conv(64, 64, 5) + _local(64, 32, 3, 36) + _local(32, 32, 3, 36) + 32 * 36 * 10 + 10


@pytest.mark.parametrize("arch, params, norms", [("cuda-convnet-11pct", PARAMS_11PCT, 2),
                                                 ("cuda-convnet-13pct", PARAMS_13PCT, 0),
                                                 ("cuda-convnet-11pct-no-norm", PARAMS_11PCT, 0)])
def test_nets_shapes_and_parameter_counts(arch, params, norms):
    from alexnet.layers import ResponseNorm
    from alexnet.models import build_model
    from alexnet.summary import summarize

    assert (PARAMS_11PCT, PARAMS_13PCT) == (2_112_970, 1_116_490)
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    rows = {r.name: r for r in summarize(model, 24)}
    assert rows["conv1"].output_shape == [64, 24, 24]
    assert rows["pool1"].output_shape == [64, 12, 12] and rows["pool2"].output_shape == [64, 6, 6]
    assert rows["local3"].output_shape == [64 if "11pct" in arch else 32, 6, 6]
    assert rows["local4"].output_shape == [32, 6, 6] and rows["fc10"].output_shape == [10]
    assert rows["local4"].macs == 36 * 32 * (64 if "11pct" in arch else 32) * 9
    assert sum(isinstance(m, ResponseNorm) for m in model.modules()) == norms
    assert model(torch.zeros(2, 3, 24, 24)).shape == (2, 10)


def test_11pct_order_of_layers_and_the_clean_ablation():
    """11pct: pool1 then rnorm1; rnorm2 then pool2. The no-norm net differs in those two only."""
    from alexnet.models import build_model

    a, b = build_model("cuda-convnet-11pct"), build_model("cuda-convnet-11pct-no-norm")
    names_a = [n for n, _ in a.named_children()]
    assert names_a.index("pool1") < names_a.index("rnorm1") < names_a.index("conv2")
    assert names_a.index("rnorm2") < names_a.index("pool2")
    assert vars(build_model("cuda-convnet-11pct", response_norm=False).config) == vars(b.config)
    b.load_state_dict(a.state_dict())             # the same parameters, by name and shape
    x = torch.randn(3, 3, 24, 24) * 60
    assert not torch.allclose(a(x), b(x))
    for m in (a.rnorm1, a.rnorm2):
        m.scale = 0.0                               # denominator 1: the norm layers become identities
    torch.testing.assert_close(a(x), b(x))


def test_norm_is_cuda_convnet_cmrnorm():
    """cmrnorm size 9, scale 0.001, pow 0.75: b = a / (1 + 0.001/9 * sum_9 a^2)^0.75, window centred."""
    from alexnet.models import build_model

    norm = build_model("cuda-convnet-11pct").rnorm1
    x = torch.randn(2, 64, 5, 5) * 30
    torch.testing.assert_close(norm(x), torch.nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0)(x))
    c = 10
    window = (x[:, c - 4:c + 5] ** 2).sum(1)
    torch.testing.assert_close(norm(x)[:, c], x[:, c] / (1 + 0.001 / 9 * window) ** 0.75)


def test_init_scales_neurons_and_pooling():
    from alexnet.models import build_model

    torch.manual_seed(0)
    model = build_model("cuda-convnet-11pct")
    for name, std in (("conv1", 1e-4), ("conv2", 0.01), ("local3", 0.04), ("local4", 0.04), ("fc10", 0.01)):
        w = getattr(model, name).weight
        assert abs(w.std().item() / std - 1) < 0.05, name
        assert torch.count_nonzero(getattr(model, name).bias) == 0
    # Max pooling over windows clipped at the edge: 24 -> 12 with the last window at 22..23.
    x = torch.zeros(1, 64, 24, 24)
    x[0, 0, 23, 23] = 5.0
    assert model.pool1(x)[0, 0, 11, 11] == 5.0 and model.pool1(x).shape[-1] == 12
    # fc10 has no neuron: logits of either sign.
    with torch.no_grad():
        model.fc10.bias.copy_(torch.linspace(-1, 1, 10))
    assert (model(torch.zeros(1, 3, 24, 24)) < 0).any()


@pytest.mark.parametrize("arch", ["cuda-convnet-11pct", "cuda-convnet-13pct"])
def test_replicas_are_independent_copies_of_the_single_net(arch):
    """Replica r of a stacked model computes exactly what a single net built with seed r does:
    outputs, and gradients of the summed per-replica losses."""
    from alexnet.models import build_model
    from alexnet.models.cuda_convnet import replica_slice

    def replica_bias(bias, index, replicas):
        rows = bias.shape[0] // replicas
        return bias[index * rows:(index + 1) * rows]

    seeds = (3, 7)
    stacked = build_model(arch, replicas=2, init_seeds=seeds).double()
    singles = [build_model(arch, init_seeds=(s,)).double() for s in seeds]
    x = [torch.randn(2, 3, 24, 24, dtype=torch.float64) * 50 for _ in seeds]
    y = [torch.randint(0, 10, (2,)) for _ in seeds]
    out = stacked(torch.cat(x, 1)).view(2, 2, 10)
    loss = sum(F.cross_entropy(out[:, r], y[r]) for r in range(2))
    loss.backward()
    for r, net in enumerate(singles):
        torch.testing.assert_close(out[:, r], net(x[r]))
        F.cross_entropy(net(x[r]), y[r]).backward()
        for name, layer in net.weight_layers().items():
            big = getattr(stacked, name)
            torch.testing.assert_close(replica_slice(big.weight, name, r, 2), replica_slice(layer.weight, name, 0, 1))
            torch.testing.assert_close(replica_slice(big.weight.grad, name, r, 2),
                                       replica_slice(layer.weight.grad, name, 0, 1))
            torch.testing.assert_close(replica_bias(big.bias.grad, r, 2), layer.bias.grad)


# ============================================================================ the recipe

from alexnet.experiments.cifar_normalisation_trainer import (  # noqa: E402
    DeviceData, Trainer, data_batches, minibatch_table, param_groups, run_schedule, schedule)


def small_data(n_train=40, n_test=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DeviceData(torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n_train,), generator=g),
                      torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n_test,), generator=g),
                      torch.rand(3, 32, 32, generator=g) * 80 + 80, 10, "cpu")


def small_trainer(arch="cuda-convnet-13pct", seeds=(0,), data=None, batch=8, dtype=torch.float64, **kw):
    from alexnet.models import build_model

    model = build_model(arch, replicas=len(seeds), init_seeds=tuple(seeds)).to(dtype)
    return Trainer(model, data or small_data(), list(seeds), batch, **kw)


def test_parameter_groups_are_the_layer_params_files():
    from alexnet.models import build_model

    for arch, fc10_wc in (("cuda-convnet-11pct", 0.01), ("cuda-convnet-13pct", 0.004)):
        groups = param_groups(build_model(arch))
        got = {n: (g["lr"], g["momentum"], g["weight_decay"]) for g in groups for n in g["names"]}
        assert got["conv1.weight"] == (0.001, 0.9, 0.0) and got["conv2.weight"] == (0.001, 0.9, 0.0)
        assert got["local3.weight"] == got["local4.weight"] == (0.001, 0.9, 0.004)
        assert got["fc10.weight"] == (0.001, 0.9, fc10_wc)
        for layer in ("conv1", "conv2", "local3", "local4", "fc10"):
            assert got[f"{layer}.bias"] == (0.002, 0.9, 0.0)           # epsB, no decay on biases
        assert len(got) == 10
    lowered = {n: g["lr"] for g in param_groups(build_model("cuda-convnet-11pct"), 0.1, 1.0) for n in g["names"]}
    assert lowered["fc10.weight"] == pytest.approx(1e-4) and lowered["fc10.bias"] == 0.002


def test_one_step_is_cuda_convnets_update_on_the_minibatch_mean():
    """Two trainer steps against Weights::update by hand: inc = mom*inc - eps*dL/dw - wc*eps*w,
    w += inc, with L the mean log loss over the minibatch's *valid* images (the padded last
    minibatch of a data batch: its 3 images, not 8)."""
    trainer = small_trainer("cuda-convnet-11pct", batch=8)
    index = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [7, 8, 2, 0, 0, 0, 0, 0]])
    valid = np.array([[1.0] * 8, [1.0] * 3 + [0.0] * 5], dtype=np.float32)
    trainer.set_phase(index, valid, 1.0, 1.0)
    ref = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    inc = {n: torch.zeros_like(p) for n, p in ref.items()}
    trainer.pos.zero_()
    for step in range(2):
        state = trainer.gen.get_state()
        trainer.step()
        # the hand computation, on the same views (same random draws)
        trainer.gen.set_state(state)
        keep = int(valid[step].sum())
        idx = torch.from_numpy(index[step])
        x = trainer.views(trainer.data.train[idx]).double()[:keep]
        net = small_trainer("cuda-convnet-11pct").model
        net.load_state_dict(ref)
        loss = F.cross_entropy(net(x), trainer.data.train_labels[idx][:keep])
        grads = dict(zip(ref, torch.autograd.grad(loss, list(net.parameters()))))
        for name in ref:
            layer, kind = name.split(".")
            p = trainer.model.layer_params[layer]
            eps, mom, wc = (p.eps_w, p.mom_w, p.wc) if kind == "weight" else (p.eps_b, p.mom_b, 0.0)
            inc[name] = mom * inc[name] - eps * grads[name] - wc * eps * ref[name]
            ref[name] = ref[name] + inc[name]
        for name, param in trainer.model.named_parameters():
            torch.testing.assert_close(param.detach(), ref[name], rtol=1e-9, atol=1e-12)


def test_training_views_crop_flip_and_centre_mean():
    """cuda-convnet: a random 24x24 window, mirrored or not, minus the mean's centre window."""
    from alexnet.data.augment import sample_params

    trainer = small_trainer()
    images = trainer.data.train[:16]
    state = trainer.gen.get_state()
    views = trainer.views(images)
    trainer.gen.set_state(state)
    p = sample_params(16, 32, trainer.aug, trainer.gen)
    centre = trainer.data.mean[:, 4:28, 4:28]
    assert 0 <= int(p.oy.min()) and int(p.oy.max()) <= 8 and p.flip.any() and not p.flip.all()
    for i in range(16):
        y, x = int(p.oy[i]), int(p.ox[i])
        crop = images[i, :, y:y + 24, x:x + 24].float()
        if p.flip[i]:
            crop = crop.flip(-1)
        torch.testing.assert_close(views[i], (crop - centre).double())


def explicit_ten_views(images, mean, window):
    """The 10 views of cuda-convnet's multiview test, spelled out: 4 corners and the centre of the
    32x32 image, and each of them mirrored; the mean's centre window (or the view's own) subtracted."""
    out = []
    for y, x in ((0, 0), (0, 8), (4, 4), (8, 0), (8, 8)):
        for flip in (False, True):
            crop = images[:, :, y:y + 24, x:x + 24].double()
            m = (mean[:, 4:28, 4:28] if window == "centre" else mean[:, y:y + 24, x:x + 24]).double()
            view = crop.flip(-1) - m if window == "centre" else (crop - m).flip(-1)
            out.append(view if flip else crop - m)
    return out


@pytest.mark.parametrize("window", ["centre", "same"])
def test_multiview_test_averages_ten_explicit_views(window):
    trainer = small_trainer(seeds=(0, 1), mean_window=window)
    with torch.no_grad():                 # larger weights, so that views give different answers
        for p in trainer.model.parameters():
            p.normal_(0, 0.01)
    images = trainer.data.test
    probs = trainer.probabilities(images, 10)                              # (N, R, 10)
    views = explicit_ten_views(images, trainer.data.mean, window)
    trainer.model.eval()
    with torch.no_grad():
        each = [trainer.model(v.double().repeat(1, 2, 1, 1)).view(len(images), 2, 10).softmax(-1) for v in views]
    torch.testing.assert_close(probs, torch.stack(each).mean(0))
    assert (each[0] - each[1]).abs().max() > 1e-4 and (probs - each[0]).abs().max() > 1e-4
    centre = trainer.model(views[4].double().repeat(1, 2, 1, 1)).view(len(images), 2, 10).softmax(-1)
    torch.testing.assert_close(trainer.probabilities(images, 1), centre)
    score = trainer.score(images, trainer.data.test_labels, 10)
    want = (probs.argmax(-1) != trainer.data.test_labels[:, None]).double().mean(0)
    assert score["error"] == pytest.approx(want.tolist())


def test_data_batches_and_cuda_convnets_minibatches():
    batches = data_batches(50_000)
    assert [len(b) for b in batches] == [10_000] * 5
    assert len(np.unique(np.concatenate(batches))) == 50_000
    index, valid = minibatch_table(batches[:4], 128)
    assert index.shape == (316, 128)                      # 4 x (78 full + one of 16)
    sizes = valid.sum(1)
    assert (sizes[78::79] == 16).all() and (np.delete(sizes, np.s_[78::79]) == 128).all()
    used = index[valid > 0]
    assert sorted(used.tolist()) == sorted(np.concatenate(batches[:4]).tolist())
    assert not np.isin(used, batches[4]).any()            # batch 5 held out


def test_schedules_of_the_two_files():
    s11, s13 = schedule("11pct"), schedule("13pct")
    assert [p.epochs for p in s11] == [350, 150, 10, 10] and [p.epochs for p in s13] == [100, 40, 10, 10]
    for s in (s11, s13):
        assert [p.batches for p in s] == [4, 5, 5, 5]
        assert [p.eps_w for p in s] == [1.0, 1.0, 0.1, 0.01]
        assert [p.eps_b for p in s] == [1.0] * 4            # the files lower epsW only
    assert [p.eps_b for p in schedule("11pct", drop_eps_b=True)] == [1.0, 1.0, 0.1, 0.01]
    assert all(p.epochs >= 1 for p in schedule("11pct", short=True)) and len(schedule("13pct", short=True)) == 4
    from alexnet.experiments.cifar_normalisation import CifarNormConfig, steps_of

    cfg = CifarNormConfig(data="-")
    assert steps_of("cuda-convnet-11pct", cfg, 50_000) == (520, 350 * 316 + 170 * 395)
    assert steps_of("cuda-convnet-13pct", cfg, 50_000) == (160, 100 * 316 + 60 * 395)


def test_run_schedule_phases_use_their_data_and_rates():
    trainer = small_trainer(seeds=(0, 1), dtype=torch.float32)
    run = run_schedule(trainer, schedule("11pct", short=True), eval_every=1, log=lambda m: None)
    ph = run["phases"]
    assert [p["images"] for p in ph] == [32, 40, 40, 40] and [p["steps_per_epoch"] for p in ph] == [4, 5, 5, 5]
    assert [p["lr"]["conv2.weight"] for p in ph] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    assert [p["lr"]["conv2.bias"] for p in ph] == [0.002] * 4
    assert run["steps"] == 2 * 4 + 3 * 5
    assert len(run["held_out"]) == 2                      # phase 1 only: batch 5 is trained on afterwards
    assert len(run["train_loss"]) == 2 and all(len(c) == 5 for c in run["train_loss"])
    assert all(0 < x < 5 for c in run["train_loss"] for x in c)


def test_a_stopped_schedule_resumes_exactly(tmp_path):
    """Stopped after a save (here: after epoch 3 of 5, inside the second phase), restored into a
    fresh trainer and resumed: the same weights, velocities, curves and held-out errors as a run
    never stopped (the saved progress goes through torch.save / weights_only load, as on disk)."""
    import copy

    from alexnet.experiments.cifar_normalisation_trainer import load_trainer_state, trainer_state

    phases = schedule("11pct", short=True)
    whole_trainer = small_trainer("cuda-convnet-11pct", seeds=(0, 1))
    whole = run_schedule(whole_trainer, phases, eval_every=1, log=lambda m: None)

    class Stop(Exception):
        pass

    saved = {}

    def save(progress):
        torch.save({"progress": progress, "trainer": trainer_state(cut_trainer)}, tmp_path / "ck.pt")
        saved["n"] = progress["epoch_no"]
        if progress["epoch_no"] == 3:
            raise Stop

    cut_trainer = small_trainer("cuda-convnet-11pct", seeds=(0, 1))
    with pytest.raises(Stop):
        run_schedule(cut_trainer, phases, eval_every=1, log=lambda m: None, save=save, save_every=1)
    assert saved["n"] == 3
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    resumed_trainer = small_trainer("cuda-convnet-11pct", seeds=(0, 1))
    load_trainer_state(resumed_trainer, copy.deepcopy(ck["trainer"]))
    lines = []
    resumed = run_schedule(resumed_trainer, phases, eval_every=1, log=lines.append, resume=ck["progress"])
    assert lines[0].startswith("resuming at epoch 4")
    for k, v in whole_trainer.model.state_dict().items():
        assert torch.equal(v, resumed_trainer.model.state_dict()[k]), k
    for a, b in zip(whole_trainer.opt.state.values(), resumed_trainer.opt.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train_loss", "train_error", "held_out", "steps"):
        assert resumed[key] == whole[key], key
    assert [p["lr"] for p in resumed["phases"]] == [p["lr"] for p in whole["phases"]]
    # and the run that was stopped had really diverged from the whole one's state at the stop
    assert not torch.equal(ck["trainer"]["model"]["conv1.weight"], whole_trainer.model.conv1.weight.detach())


def test_a_job_checkpoint_of_other_settings_is_ignored_and_a_damaged_one_named(tmp_path):
    from alexnet.errors import CheckpointError
    from alexnet.experiments.cifar_normalisation_jobs import _resume_point
    from alexnet.experiments.cifar_normalisation_trainer import trainer_state

    trainer = small_trainer()
    ck = tmp_path / "job.ckpt.pt"
    assert _resume_point(trainer, ck, {"a": 1}, log=print) is None           # nothing saved yet
    torch.save({"spec": {"a": 2}, "progress": {}, "trainer": trainer_state(trainer)}, ck)
    said = []
    assert _resume_point(trainer, ck, {"a": 1}, log=said.append) is None
    assert "other settings" in said[0]
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="job.ckpt.pt: cannot be read") as e:
        _resume_point(trainer, ck, {"a": 1}, log=print)
    assert "\n" not in str(e.value)


def test_the_report_says_when_the_training_images_were_jpeg(tmp_path):
    from alexnet.experiments.cifar_normalisation_report import format_result, jpeg_share

    assert jpeg_share(tmp_path) is None                                    # nothing recorded
    (tmp_path / "train.files.txt").write_text("train/a/1.jpg\ntrain/a/2.JPEG\ntrain/b/3.png\ntrain/b/4.jpg\n")
    assert jpeg_share(tmp_path) == 0.75
    result = {"train_images": 4, "seeds": [0], "nets": {}, "comparisons": {}, "paper": "p", "source_jpeg_share": 0.75}
    assert "note: 75% of the training images came from JPEG files" in format_result(result)
    assert "JPEG" not in format_result({**result, "source_jpeg_share": 0.0})


# ============================================================================ the experiment


@pytest.mark.slow
def test_short_experiment_end_to_end(shapes, tmp_path, capsys):
    import json

    from alexnet.cli import main

    out = tmp_path / "cn"
    args = ["experiment", "cifar-normalisation", "--data", str(shapes), "--out", str(out), "--short",
            "--nets", "cuda-convnet-11pct", "cuda-convnet-11pct-no-norm", "--seeds", "0", "1",
            "--train-images", "60", "--test-images", "20", "--batch-size", "16", "--devices", "cpu",
            "--checkpoint-every", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert not list((out / "runs").glob("*.ckpt.pt"))       # saved every epoch, removed once the result is written
    assert (out / "cifar_normalisation.png").stat().st_size > 10_000
    assert text.index("budget") < text.index("epoch 1 (batches 1-4)")        # the plan comes first
    result = json.loads((out / "cifar_normalisation.json").read_text())
    nets = result["nets"]
    assert list(nets) == ["cuda-convnet-11pct", "cuda-convnet-11pct-no-norm"]
    for net in nets.values():
        assert list(net["per_seed"]) == ["0", "1"] and net["steps"] == 2 * 4 + 3 * 5   # 12 images per data batch
        for v in net["per_seed"].values():
            for key in ("test_error_1view", "test_error_10views", "train_error_eval", "train_error_running"):
                assert 0.0 <= v[key] <= 1.0
            assert len(v["train_loss_curve"]) == 5 and len(v["held_out_error"]) == 2
        values = [v["test_error_10views"] for v in net["per_seed"].values()]
        assert net["test_error_10views"]["mean"] == pytest.approx(np.mean(values))
    a, b = (nets[n]["test_error_10views"] for n in nets)
    diff = result["comparisons"]["cuda-convnet-11pct - cuda-convnet-11pct-no-norm"]["test_error_10views"]
    assert diff["points"] == pytest.approx(100 * (a["mean"] - b["mean"]))
    assert diff["se"] == pytest.approx(100 * math.sqrt(a["std"] ** 2 / 2 + b["std"] ** 2 / 2))
    table = text[text.index("test % 10 views"):]
    assert "11pct minus no-norm" in table and "mean+-sd" in table and " 11 " in table
    # a second call reuses the finished runs
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().out
    assert json.loads((out / "cifar_normalisation.json").read_text())["nets"] == nets


def test_user_errors_are_one_line(shapes, tmp_path, capsys):
    from alexnet.cli import main
    from alexnet.errors import ConfigError
    from alexnet.experiments.cifar_normalisation import CifarNormConfig

    with pytest.raises(ConfigError, match="unknown net"):
        CifarNormConfig(data="x", nets=["cuda-convnet-18pct"])
    with pytest.raises(ConfigError, match="seeds"):
        CifarNormConfig(data="x", seeds=[1, 1])
    assert main(["experiment", "cifar-normalisation", "--data", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "o"), "--devices", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="CUDA graphs"):
        small_trainer(graph=True)
    out = tmp_path / "budget"
    assert main(["experiment", "cifar-normalisation", "--data", str(shapes), "--out", str(out), "--short",
                 "--nets", "cuda-convnet-13pct", "--seeds", "0", "--train-images", "40", "--test-images", "10",
                 "--batch-size", "16", "--devices", "cpu", "--budget-seconds", "0.001"]) == 2
    err = capsys.readouterr().err.strip()
    assert "budget" in err and len(err.splitlines()) == 1 and not (out / "runs").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_steps_equal_eager_steps_on_cuda(shapes, tmp_path):
    from alexnet.experiments.cifar_normalisation import CifarNormConfig
    from alexnet.experiments.cifar_normalisation_report import smoke

    cfg = CifarNormConfig(data=str(shapes), out=str(tmp_path), seeds=[0, 1], devices=["cuda"], batch_size=16)
    report = smoke(cfg, log=print, steps=12)
    assert all(r["ok"] and r["captured"] for r in report.values())


def test_jobs_spread_over_devices_longest_first():
    from alexnet.experiments.cifar_normalisation import CifarNormConfig, make_jobs

    est = {"cuda-convnet-11pct": 120.0, "cuda-convnet-11pct-no-norm": 100.0, "cuda-convnet-13pct": 30.0}
    cfg = CifarNormConfig(data="-", devices=["cuda:0", "cuda:1"])
    jobs = make_jobs(cfg, est)
    assert [(j.net, j.device) for j in jobs] == [("cuda-convnet-11pct", "cuda:0"),
                                                  ("cuda-convnet-11pct-no-norm", "cuda:1"),
                                                  ("cuda-convnet-13pct", "cuda:1")]
    assert all(j.seeds == (0, 1, 2) for j in jobs)
    single = make_jobs(CifarNormConfig(data="-", devices=["cuda:0", "cuda:1"], stack_seeds=False), est)
    assert len(single) == 9 and {j.seeds for j in single} == {(0,), (1,), (2,)}
    load = {d: sum(est[j.net] for j in single if j.device == d) for d in ("cuda:0", "cuda:1")}
    assert abs(load["cuda:0"] - load["cuda:1"]) <= 30.0
