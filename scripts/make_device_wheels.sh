#!/usr/bin/env bash
# The wheels the GPU machines need but do not have (they install nothing from the network), in .whl/
# (git-ignored), small enough to carry beside .carry/imagenet-sample (64 MiB a call):
#   nvidia-nvimgcodec-cu13 (slimmed: the cp312 module and the JPEG extensions only, ~5 MB of 25),
#   nvidia-nvjpeg (its libnvjpeg.so.13), simplejpeg for CPython 3.12.
# Run from the repository root on this machine (PyPI reachable); scripts/gpu_decode_e2e.sh and
# scripts/gpu_last_check.sh install them on the device with pip --target.
set -euo pipefail
PIP=${PIP:-.venv/bin/pip}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p .whl
rm -f .whl/*.whl
$PIP download -q --no-deps -d "$TMP" nvidia-nvimgcodec-cu13 nvidia-nvjpeg
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl simplejpeg
cp "$TMP"/nvidia_nvjpeg-*.whl .whl/
wheel=$(ls "$TMP"/nvidia_nvimgcodec_cu13-*.whl)
mkdir "$TMP/slim"
(cd "$TMP/slim" && unzip -q "$wheel" \
  && find nvidia/nvimgcodec -maxdepth 1 -name 'nvimgcodec_impl.cpython-*' ! -name '*cpython-312-*' -delete \
  && rm -rf nvidia/nvimgcodec/tools nvidia/nvimgcodec/include \
  && find nvidia/nvimgcodec/extensions -name 'lib*_ext.so*' ! -name 'libnvjpeg_ext*' ! -name 'libjpeg_turbo_ext*' -delete \
  && python3 - <<'PY'
import base64, hashlib, pathlib
root = pathlib.Path(".")
info = next(root.glob("*.dist-info"))
rows = []
for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "RECORD"):
    digest = base64.urlsafe_b64encode(hashlib.sha256(f.read_bytes()).digest()).rstrip(b"=").decode()
    rows.append(f"{f.as_posix()},sha256={digest},{f.stat().st_size}")
rows.append(f"{info.name}/RECORD,,")
(info / "RECORD").write_text("\n".join(rows) + "\n")
PY
)
(cd "$TMP/slim" && zip -q -r "$OLDPWD/.whl/$(basename "$wheel")" nvidia ./*.dist-info)
ls -la .whl
