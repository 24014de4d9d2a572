#!/usr/bin/env bash
# The lent GPU machine's command (it has no registry, diffusers or tyro): install the carried wheels (.ci/gpu-wheels.sh
# put them in .whl/) into /tmp/site, then run the check; the report goes to ${OUT:-results}/compute/gpu_check.{json,md}.
# Device tool call, from the repository root: run(command="bash .ci/gpu-check-device.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
out="${OUT:-results}"
mkdir -p "$out"
timeout 540 python3 -m harness.compute.gpu_check --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
