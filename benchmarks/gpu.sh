#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command, sized for a short device
# lease (at most 8 minutes of a 15-minute budget, machine start excluded). Run it from
# the repository root on a machine whose Python already has jax (CUDA), equinox,
# diffrax, optax, torch and torchdiffeq; tadiffeq is taken from this checkout:
#
#     bash benchmarks/gpu.sh            # writes under $OUT (default results/benchmarks)
#
# What it does: records the GPU, driver and versions; then the 18-conv U-Net and the
# 6-conv field at batch 256 against the torch reference on the same GPU
# (bench_vs_torch.py --torch-device cuda), 20 repeats, with the achieved FLOP/s of
# the field against the H200's dense TF32 tensor-core peak (494.5 TFLOP/s,
# NVIDIA's datasheet; both XLA's and cuDNN's float32 convolutions use TF32 by
# default on this GPU) and against a measured 8192^3 float32 matrix product.
set -uo pipefail
OUT=${OUT:-results/benchmarks}
PEAK=${PEAK_GFLOPS:-494500}
BATCH=${BATCH:-256}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}  # a CPU dry run of the plumbing: TORCH_DEVICE=cpu BATCH=2 REPEATS=1
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU's memory

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python - <<'EOF'
import diffrax, equinox, jax, optax, torch, torchdiffeq
print("jax", jax.__version__, jax.devices())
print("equinox", equinox.__version__, "diffrax", diffrax.__version__, "optax", optax.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("torchdiffeq", torchdiffeq.__version__)
EOF
} 2>&1 | tee "$OUT/gpu_environment.txt"

# Seconds per model (compilation of both JAX adjoints included); the U-Net first.
for spec in "unet:${UNET_TIMEOUT:-300}" "conv6:${CONV6_TIMEOUT:-180}"; do
  model=${spec%%:*}
  timeout "${spec##*:}" python -m benchmarks.bench_vs_torch \
    --model "$model" --batch "$BATCH" --repeats "${REPEATS:-20}" \
    --torch-device "$TORCH_DEVICE" --peak-gflops "$PEAK" \
    --out "$OUT/vs_torch_${model}_b${BATCH}_gpu.json" 2>&1 |
    grep -v -i "warn" | tee "$OUT/vs_torch_${model}_b${BATCH}_gpu.log"
done
