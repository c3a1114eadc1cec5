#!/usr/bin/env bash
# Sixteenth session (2026-12-02), call 4: the GPU tests of the final code that call 1 did not reach (it
# stopped at its first failure, in tests/test_step.py) or that the last changes touch: a graphed
# `alexnet train` with one graph per Feeder buffer, the run's warm-up steps, deterministic mode per run.
source scripts/gpu_env.sh
nv_wheels
timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/test_checks.py tests/test_step.py tests/test_synthetic.py \
  tests/test_train.py tests/test_triton_interpreter.py --tb=short 2>&1 | grep -vE "^\s*$|[Ww]arn|jit" | tail -20
