#!/bin/sh
# One GPU's checks and figures, in the order of what they settle, each step under its
# own time limit so that the earlier steps' results stand when a later one runs out:
#   1. the CUDA engine against the CPU, on the GPU (tests/cuda_checks.py, ensembles too);
#   2. an ensemble's members in one launch against in turn, a loop and PyTorch;
#   3. fastbp's CUDA engine against PyTorch on the three shapes.
# Needs numba-cuda and (for the peers) a CUDA build of PyTorch. Usage, from the checkout:
#   sh bench/gpu_checks.sh OUT_DIR [SECONDS_PER_STEP]
out=${1:?output folder}
limit=${2:-240}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import numba, numba_cuda, numpy; print('numba', numba.__version__, 'numpy', numpy.__version__)" >> "$out/gpu.txt" 2>&1
timeout "$limit" python3 -m pytest -q -p no:cacheprovider tests/cuda_checks.py \
    > "$out/cuda_checks.txt" 2>&1
echo "cuda_checks exit $?" >> "$out/gpu.txt"
timeout "$limit" python3 bench/ensemble_vs_loop.py --device cuda --only narrow,mnist \
    --reps 5 --json "$out/ensemble-gpu.json" > "$out/ensemble-gpu.txt" 2>&1
echo "ensemble_vs_loop exit $?" >> "$out/gpu.txt"
timeout "$limit" python3 bench/gpu_compare.py --json "$out/gpu-compare.json" \
    > "$out/gpu-compare.txt" 2>&1
echo "gpu_compare exit $?" >> "$out/gpu.txt"
cat "$out/gpu.txt"
