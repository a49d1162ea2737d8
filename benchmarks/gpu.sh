#!/usr/bin/env bash
# The GPU run of benchmarks/bench_step.py, on a machine with one NVIDIA GPU and no TensorFlow:
# bit_keras on Keras' JAX backend against timm (eager and torch.compile), bf16, at the gpu-a
# (batch 128 at 128 px) and gpu-b (batch 32 at 480 px) settings, one table each.
#
#   bash benchmarks/gpu.sh                      # from the repository root, about 8 minutes
#   bash benchmarks/gpu.sh --repeats 1          # any further flags go to bench_step.py
#
# What is missing is installed into .gpu-site/ (PYTHONPATH, not the system's packages):
# wheels from .whl/ when it holds any (for a machine that cannot reach the package
# registry: fill it with ../shared/tools/gpu-wheels or `pip download` beforehand), else from
# the registry. jax[cuda] and torch are expected to be there already: their CUDA builds are
# gigabytes.
set -euo pipefail
cd "$(dirname "$0")/.."
site="$PWD/.gpu-site"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}

missing=()
for module in keras timm; do
    "$python" -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "== installing the wheels in .whl/ into $site (missing: ${missing[*]})"
        "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl
    else
        echo "== installing ${missing[*]} from the package registry into $site"
        want=()
        for module in "${missing[@]}"; do
            case $module in
                keras) want+=("keras>=3.15,<3.16") ;;
                timm) want+=("timm>=1.0") ;;
            esac
        done
        "$python" -m pip install -q --no-compile --target "$site" "${want[@]}"
    fi
fi
"$python" -c "import jax; print('== jax', jax.__version__, 'on', jax.devices()[0].device_kind)"
"$python" -c "import torch; print('== torch', torch.__version__, 'cuda', torch.cuda.is_available())"

contenders="bit_keras/jax,timm/eager,timm/compile"
for setting in gpu-a gpu-b; do
    echo "== bench_step.py --setting $setting"
    # 230 s a setting: both fit in 8 minutes with the installs; warm-up (XLA and inductor compiles) dominates.
    timeout 230 "$python" benchmarks/bench_step.py --setting "$setting" --contenders "$contenders" \
        --repeats 3 --min_seconds 2 --warmup_timeout 150 "$@" || echo "== $setting did not finish (exit $?)"
done
