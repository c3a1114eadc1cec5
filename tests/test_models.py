"""Facts of the paper about the networks: shapes, parameter counts, multiply-adds, columns."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from alexnet.errors import ConfigError
from alexnet.layers import response_norm
from alexnet.models import build_model
from alexnet.summary import info


def shapes(arch, size, **options):
    return {r["name"]: tuple(r["output_shape"]) for r in info(build_model(arch, **options), arch, size)["layers"]}


def test_alexnet2012_layer_shapes_follow_the_paper():
    s = shapes("alexnet2012", 224)
    assert s["conv1"] == (96, 55, 55)
    assert s["pool1"] == (96, 27, 27)
    assert s["conv2"] == (256, 27, 27)
    assert s["pool2"] == (256, 13, 13)
    assert s["conv3"] == (384, 13, 13)
    assert s["conv4"] == (384, 13, 13)
    assert s["conv5"] == (256, 13, 13)
    assert s["pool5"] == (256, 6, 6)
    assert s["fc6"] == (4096,) and s["fc7"] == (4096,) and s["fc8"] == (1000,)


def test_caffe_227_input_gives_the_same_shapes():
    assert shapes("alexnet2012", 227)["conv1"] == (96, 55, 55)


def test_non_overlapping_pooling_keeps_the_spatial_sizes():
    s = shapes("alexnet2012", 224, pooling="non-overlapping")
    assert s["pool1"] == (96, 27, 27) and s["pool2"] == (256, 13, 13) and s["pool5"] == (256, 6, 6)


@pytest.mark.parametrize("arch,options,params,macs", [
    ("alexnet2012", {}, 60_965_224, 724_406_816),
    ("alexnet2012", {"recipe": "cuda-convnet"}, 60_965_224, 724_406_816),
    ("alexnet2012", {"columns": 1}, 59_798_312, None),
    ("torchvision", {}, 61_100_840, 714_188_480),
])
def test_parameter_and_multiply_add_counts(arch, options, params, macs):
    report = info(build_model(arch, **options), arch, 224)
    assert report["params"] == params
    if macs is not None:
        assert report["macs"] == macs


def test_conv1_overhang_is_three_zeros_right_and_bottom():
    torch.manual_seed(0)
    model = build_model("alexnet2012").eval()
    x = torch.randn(2, 3, 224, 224)
    ours = model.conv1(x)                       # conv1 pads the overhang itself
    direct = F.conv2d(F.pad(x, (0, 3, 0, 3)), model.conv1.weight, model.conv1.bias, stride=4)
    assert ours.shape == (2, 96, 55, 55)
    torch.testing.assert_close(ours, direct)


def test_paper_initialisation():
    torch.manual_seed(0)
    model = build_model("alexnet2012")
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert torch.all(getattr(model, name).bias == 1.0), name
    for name in ("conv1", "conv3", "fc8"):
        assert torch.all(getattr(model, name).bias == 0.0), name
    assert abs(model.fc6.weight.std().item() - 0.01) < 2e-4
    code = build_model("alexnet2012", recipe="cuda-convnet")
    assert abs(code.conv4.weight.std().item() - 0.03) < 1e-3
    assert abs(code.conv1.weight.std().item() - 0.01) < 1e-3




def test_two_columns_computed_separately_equal_the_grouped_network():
    """Each column on its own, exchanging only at conv3 and the FC layers, equals groups=2."""
    torch.manual_seed(1)
    model = build_model("alexnet2012").eval()
    x = torch.randn(2, 3, 224, 224) * 50
    m = model
    half = lambda t, i: t.chunk(2, dim=0)[i]  # noqa: E731 - output channels of column i

    def lrn(t):
        return response_norm(t, 5, 1e-4, 0.75, 2.0)

    def stage(t, conv, i, pad=0):
        return F.conv2d(t, half(conv.weight, i), half(conv.bias, i), stride=conv.stride, padding=pad)

    cols = []
    for i in range(2):
        t = F.max_pool2d(lrn(F.relu(stage(F.pad(x, (0, 3, 0, 3)), m.conv1, i))), 3, 2)
        t = F.max_pool2d(lrn(F.relu(stage(t, m.conv2, i, pad=2))), 3, 2)
        cols.append(t)
    both = torch.cat(cols, 1)                                 # conv3 reads both columns
    cols = [F.relu(stage(both, m.conv3, i, pad=1)) for i in range(2)]
    cols = [F.relu(stage(c, m.conv4, i, pad=1)) for i, c in enumerate(cols)]
    cols = [F.max_pool2d(F.relu(stage(c, m.conv5, i, pad=1)), 3, 2) for i, c in enumerate(cols)]
    flat = torch.cat(cols, 1).flatten(1)                      # fc6 reads both columns
    h = torch.cat([F.relu(F.linear(flat, half(m.fc6.weight, i), half(m.fc6.bias, i))) for i in range(2)], 1)
    h = torch.cat([F.relu(F.linear(h, half(m.fc7.weight, i), half(m.fc7.bias, i))) for i in range(2)], 1)
    logits = F.linear(h, m.fc8.weight, m.fc8.bias)
    torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-4)


def test_response_norm_window_stays_inside_a_column():
    """A column's normalisation must not see the other column's maps (each GPU held its own)."""
    model = build_model("alexnet2012").eval()
    x = torch.zeros(1, 96, 3, 3)
    x[:, 48] = 100.0           # first map of column 2, next to the last map of column 1
    y = model.norm1(x)
    torch.testing.assert_close(y[:, 47], torch.zeros_like(y[:, 47]))
    x[:, 47] = 1.0
    assert torch.allclose(model.norm1(x)[:, 47], torch.full_like(y[:, 47], 1 / 2 ** 0.75 / (1 + 1e-4 / 2) ** 0.75))


def test_cuda_convnet_recipe_orders_conv1_as_the_code():
    model = build_model("alexnet2012", recipe="cuda-convnet").eval()
    assert model.norm1.scale == pytest.approx(1e-4 / 5)
    x = torch.randn(1, 3, 224, 224) * 50
    conv = model.conv1(x)
    expected = F.relu(F.max_pool2d(response_norm(conv, 5, 1e-4 / 5, 0.75, 2.0, groups=2), 3, 2))
    seen = []
    model.act1.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    model.stem(x)                              # the forward pass's own order
    torch.testing.assert_close(seen[0], expected)
    assert type(model.mapnorm2).__name__ == "WithinMapNorm"
    assert type(build_model("alexnet2012").mapnorm2).__name__ == "Identity"


@pytest.mark.parametrize("options", [
    {"activation": "tanh"}, {"response_norm": False}, {"pooling": "non-overlapping"},
    {"dropout": 0.0}, {"columns": 1}, {"recipe": "cuda-convnet"},
])
def test_ablation_variants_build_and_run(options):
    model = build_model("alexnet2012", num_classes=7, **options).eval()
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 7)


def test_torchvision_variant_loads_a_torchvision_state_dict_and_matches():
    torch.manual_seed(2)
    reference = torchvision.models.alexnet().eval()
    ours = build_model("torchvision").eval()
    ours.load_state_dict(reference.state_dict())          # exact names: loads unchanged
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("arch", ["cifar-fig1", "cifar-alexnet"])
@pytest.mark.parametrize("size", [24, 28, 32])
def test_cifar_networks_take_small_images(arch, size):
    model = build_model(arch, input_size=size).eval()
    assert model(torch.randn(3, 3, size, size)).shape == (3, 10)
    assert model.hidden(torch.randn(3, 3, size, size)).ndim == 2


def test_cifar_alexnet_one_and_two_columns():
    two = build_model("cifar-alexnet")
    one = build_model("cifar-alexnet", columns=1)
    assert two.conv2.groups == 2 and one.conv2.groups == 1
    assert sum(p.numel() for p in one.parameters()) < sum(p.numel() for p in two.parameters())


def test_unknown_names_and_options_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: alexnet2012, torchvision"):
        build_model("vgg")
    with pytest.raises(ConfigError, match="unknown option.*columns.*valid: num_classes, dropout"):
        build_model("torchvision", columns=1)
    with pytest.raises(ConfigError, match="relu, tanh"):
        build_model("alexnet2012", activation="sigmoid")
