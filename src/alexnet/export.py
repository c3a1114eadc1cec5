"""Export a trained network: safetensors weights with their metadata, or an ONNX graph.

The ONNX graph is traced from the plain path (the reference response normalisation, on the CPU):
no fused kernel enters it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.errors import ConfigError


def export_safetensors(ckpt: dict, out: Path) -> Path:
    from safetensors.torch import save_file

    model = {k: v.contiguous() for k, v in ckpt["model"].items()}
    model["__mean__"] = ckpt["mean"].contiguous()
    meta = {"arch": ckpt["arch"], "model_options": json.dumps(ckpt["model_options"]),
            "classes": json.dumps(ckpt["classes"]), "class_names": json.dumps(ckpt["class_names"]),
            "crop": str(ckpt["crop"]), "image_size": str(ckpt["image_size"]),
            "input_scale": str(ckpt["input_scale"]), "input": "RGB, 0-255, minus __mean__ (cropped), times input_scale"}
    save_file(model, str(out), metadata=meta)
    return out


def export_onnx(ckpt: dict, out: Path, opset: int = 17) -> Path:
    model = model_from_checkpoint(ckpt, impl="reference").eval()
    crop = ckpt["crop"]
    x = torch.randn(1, 3, crop, crop) * 50
    torch.onnx.export(model, (x,), str(out), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    return out


def check_onnx(ckpt: dict, path: Path, batch: int = 2) -> float:
    """Largest absolute difference between the ONNX graph's and the model's logits on random input
    (onnxruntime when installed, else the onnx checker only, returning nan)."""
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    model = model_from_checkpoint(ckpt, impl="reference").eval()
    x = torch.randn(batch, 3, ckpt["crop"], ckpt["crop"]) * 50
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        want = model(x)
    return (got - want).abs().max().item()


def export(checkpoint: str, fmt: str, out: str | None = None) -> tuple[Path, float | None]:
    if fmt not in ("safetensors", "onnx"):
        raise ConfigError(f"unknown export format {fmt!r}: safetensors, onnx")
    ckpt = load_checkpoint(checkpoint)
    model_from_checkpoint(ckpt, impl="reference", where=checkpoint)     # the weights fit their network
    path = Path(out) if out else Path(checkpoint).with_suffix("." + fmt)
    if fmt == "safetensors":
        return export_safetensors(ckpt, path), None
    export_onnx(ckpt, path)
    return path, check_onnx(ckpt, path)
