#!/usr/bin/env bash
# Two virtual environments for the TRL side of the benchmarks (bench/run.py), beside tether's .venv:
#   bench/.venv-trl     the latest TRL (GRPO, DPO, reward, SFT trainers)
#   bench/.venv-trl112  trl==1.12.0, the last release with PPOTrainer
# torch goes in first, pinned to the same CPU build as tether's venv, so that nothing pulls a CUDA build.
# Re-running is cheap: a venv whose stamp matches its requirements is left alone.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-$(command -v python3.11 || command -v python3)}
TORCH=${TORCH:-torch==2.13.0}
TRL_LATEST=${TRL_LATEST:-trl}
TRL_PPO=${TRL_PPO:-trl==1.12.0}

make_venv() {  # make_venv DIR TRL_SPEC
    local dir=$1 trl=$2 stamp="$1/.installed"
    local want="$TORCH $trl peft datasets"
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
        echo "$dir: up to date ($want)"
        return
    fi
    test -d "$dir" || "$PY" -m venv "$dir"
    "$dir/bin/pip" install --quiet --upgrade pip
    "$dir/bin/pip" install --quiet "$TORCH"
    "$dir/bin/pip" install --quiet "$trl" peft datasets
    "$dir/bin/python" -c 'import torch, trl, peft, datasets, transformers; print(f"torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")'
    # the CPU build must have stayed
    "$dir/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.endswith("+cpu") or not torch.version.cuda else "a CUDA torch build got installed")'
    echo "$want" >"$stamp"
}

make_venv .venv-trl "$TRL_LATEST"
make_venv .venv-trl112 "$TRL_PPO"
