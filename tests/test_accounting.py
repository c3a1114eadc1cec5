"""Bytes moved and held per device, from the layer shapes (alexnet.parallel.accounting)."""

from __future__ import annotations

import json

import pytest
import torch

from alexnet.errors import ConfigError
from alexnet.models.alexnet2012 import AlexNet2012Config
from alexnet.parallel.accounting import column_accounting, format_accounting

PARAMS = 60_965_224
CONV_PARAMS = 2 * (48 * 3 * 121 + 48 + 128 * 48 * 25 + 128 + 192 * 256 * 9 + 192 + 192 * 192 * 9 + 192
                   + 128 * 192 * 9 + 128)


def test_column_exchanges_follow_from_the_shapes():
    B = 128
    acc = column_accounting(None, batch=B)
    ex = {e["point"]: e for e in acc["columns"]["exchanges"]}
    assert list(ex) == ["conv3", "fc6", "fc7", "fc8"]
    assert ex["conv3"]["shape_per_column"] == [128, 13, 13]
    assert ex["conv3"]["forward_bytes_per_column"] == B * 128 * 13 * 13 * 4
    assert ex["fc6"]["forward_bytes_per_column"] == B * 9216 // 2 * 4
    assert ex["fc7"]["forward_bytes_per_column"] == B * 2048 * 4
    assert ex["fc8"]["forward_bytes"] == B * 2048 * 4                  # column 1 -> column 0 only
    for name in ("conv3", "fc6", "fc7"):
        assert ex[name]["forward_bytes"] == 2 * ex[name]["forward_bytes_per_column"]   # both ways
    assert all(e["backward_bytes"] == e["forward_bytes"] for e in ex.values())         # gradients back
    per_image = 2 * (2 * (128 * 13 * 13 + 4608 + 2048) + 2048)
    comm = acc["columns"]["comm"]
    assert comm["bytes_per_step"] == B * per_image * 4 == 60_030_976
    assert comm["gradient_sync_bytes"] == 0
    assert comm["max_bytes_sent_by_one_device"] == comm["bytes_per_step"] // 2   # the columns send alike
    half = column_accounting(None, batch=B, dtype_bytes=2)
    assert half["columns"]["comm"]["bytes_per_step"] == comm["bytes_per_step"] // 2
    assert column_accounting(None, batch=1)["columns"]["comm"]["bytes_per_step"] * B == comm["bytes_per_step"]


def test_parameter_gradient_and_velocity_bytes_per_device():
    acc = column_accounting(AlexNet2012Config(), batch=128)
    one = acc["one_device"]["per_device"][0]
    assert one["param_bytes"] == PARAMS * 4 == acc["param_bytes"]
    assert one["grad_bytes"] == one["optimizer_state_bytes"] == one["param_bytes"]   # PaperSGD: one velocity
    c0, c1 = acc["columns"]["per_device"]
    assert (c0["param_bytes"], c1["param_bytes"]) == (32_531_112 * 4, 28_434_112 * 4)  # fc8 on column 0
    assert c0["param_bytes"] + c1["param_bytes"] == one["param_bytes"]
    assert c0["total_bytes"] == 3 * c0["param_bytes"] + c0["activation_bytes"] + c0["input_bytes"]
    assert c0["input_bytes"] == 128 * 3 * 224 * 224 * 4                 # each column reads the whole image
    # The counts agree with the modules themselves (built on the meta device: no memory, no init).
    from alexnet.models import build_model
    from alexnet.models.alexnet2012 import AlexNet2012

    with torch.device("meta"):
        assert sum(p.numel() for p in build_model("alexnet2012").parameters()) == PARAMS
        assert sum(p.numel() for p in AlexNet2012(AlexNet2012Config(), column=0).parameters()) * 4 == c0["param_bytes"]
    # num_classes changes fc8, on column 0 only.
    ten = column_accounting(AlexNet2012Config(num_classes=10), batch=128)["columns"]["per_device"]
    assert ten[1]["param_bytes"] == c1["param_bytes"]
    assert c0["param_bytes"] - ten[0]["param_bytes"] == 990 * 4097 * 4


def test_activation_estimate_counts_the_saved_tensors():
    acc = column_accounting(None, batch=1)
    floats = (3 * 227 * 227 + 96 * 55 * 55 * 2 + 96 * 27 * 27 + 256 * 27 * 27 * 2 + 256 * 13 * 13
              + (384 + 384 + 256) * 13 * 13 + 256 * 6 * 6 + 4 * 4096)
    indices = 96 * 27 * 27 + 256 * 13 * 13 + 256 * 6 * 6
    masks = 2 * 4096
    assert acc["one_device"]["per_device"][0]["activation_bytes"] == floats * 4 + indices * 8 + masks
    # The columns also keep the gathered inputs of conv3, fc6, fc7 (and fc8 on column 0).
    col = (3 * 227 * 227 + 48 * 55 * 55 * 2 + 48 * 27 * 27 + 128 * 27 * 27 * 2 + 128 * 13 * 13
           + 256 * 13 * 13 + (192 + 192 + 128) * 13 * 13 + 128 * 36 + 9216 + 4 * 2048 + 4096)
    col_idx = 48 * 27 * 27 + 128 * 13 * 13 + 128 * 36
    c0, c1 = acc["columns"]["per_device"]
    assert c1["activation_bytes"] == col * 4 + col_idx * 8 + 2 * 2048
    assert c0["activation_bytes"] - c1["activation_bytes"] == 4096 * 4
    no_drop = column_accounting(AlexNet2012Config(dropout=0.0), batch=1)["one_device"]["per_device"][0]
    assert acc["one_device"]["per_device"][0]["activation_bytes"] - no_drop["activation_bytes"] == 2 * 4096 * 5
    code = column_accounting(AlexNet2012Config(recipe="cuda-convnet"), batch=1)["one_device"]["per_device"][0]
    assert code["activation_bytes"] - no_drop["activation_bytes"] - 2 * 4096 * 5 == 256 * 27 * 27 * 4  # cnorm2
    assert column_accounting(None, batch=128)["one_device"]["per_device"][0]["activation_bytes"] == \
        128 * acc["one_device"]["per_device"][0]["activation_bytes"]


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_data_parallel_and_hybrid(workers):
    B, P = 128, PARAMS * 4
    acc = column_accounting(None, batch=B, workers=workers)
    dp = acc["data_parallel"]
    assert dp["devices"] == workers and dp["allreduce_payload_bytes"] == P
    assert dp["comm"]["max_bytes_sent_by_one_device"] == round(2 * (workers - 1) / workers * P)   # ring
    assert dp["comm"]["bytes_per_step"] == dp["comm"]["gradient_sync_bytes"] == 2 * (workers - 1) * P
    assert all(d["param_bytes"] == P for d in dp["per_device"])
    hy = acc["hybrid"]
    assert hy["allreduce_payload_bytes"] == CONV_PARAMS * 4 == 2_334_080 * 4
    assert hy["comm"]["gradient_sync_bytes"] == 2 * (workers - 1) * CONV_PARAMS * 4
    fc = sum(-(-out // workers) * (inp + 1) for out, inp in ((4096, 9216), (4096, 4096), (1000, 4096)))
    assert hy["per_device"][0]["param_bytes"] == (CONV_PARAMS + fc) * 4
    ex = {e["point"]: e for e in hy["exchanges"]}
    assert ex["fc6"]["forward_bytes"] == (workers - 1) * B * 9216 * 4      # ring all-gather of conv5 outputs
    assert ex["softmax"]["backward_bytes"] == 0
    assert hy["comm"]["forward_bytes"] == (workers - 1) * B * (9216 + 4096 + 4096 + 1000) * 4
    if workers == 1:
        assert hy["per_device"][0] == dp["per_device"][0] == acc["one_device"]["per_device"][0]
        assert hy["comm"]["bytes_per_step"] == dp["comm"]["bytes_per_step"] == 0


def test_refusals():
    with pytest.raises(ConfigError, match="columns=2"):
        column_accounting(AlexNet2012Config(columns=1), batch=128)
    with pytest.raises(ConfigError, match="positive"):
        column_accounting(None, batch=0)
    with pytest.raises(ConfigError, match="6x6"):
        column_accounting(None, batch=1, input_size=256)
    with pytest.raises(ConfigError, match="alexnet2012"):
        column_accounting(object(), batch=1)
    # 227 (Caffe's crop) needs no overhang: the same exchanges.
    assert column_accounting(None, batch=1, input_size=227)["columns"]["comm"] == \
        column_accounting(None, batch=1)["columns"]["comm"]


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def test_info_command_shows_the_accounting(capsys):
    from alexnet.cli import main

    assert main(["info", "--arch", "alexnet2012", "--parallel", "columns", "--batch", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    par = report["parallel"]
    assert par["batch"] == 64 and report["params"] == PARAMS
    assert {"columns", "data_parallel", "hybrid", "one_device"} <= set(par)
    assert {"param_bytes", "grad_bytes", "optimizer_state_bytes", "activation_bytes", "bytes_per_step",
            "forward_bytes", "backward_bytes"} <= set(_keys(par))
    assert par["columns"]["comm"]["bytes_per_step"] == 60_030_976 // 2
    table = format_accounting(par)
    assert "columns" in table and "hybrid x2" in table and "conv3 21,632" in table
