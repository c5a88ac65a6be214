#!/usr/bin/env bash
# The main job: install golf into .venv, then tokenize -> train -> quantize -> pack -> eval on the
# embedded news corpus, on CPU, and print the packed artifact's val_bpb, its exact size against
# the 16,000,000-byte limit, and the time ledger of every stage. About 6-8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/setup_env.sh

RUN="${RUN:-news}"
golf tokenize --run "$RUN" --vocab-size 1024 --force
golf train --run "$RUN" --preset tiny --force
# The tiny model's tied embedding is its only matrix above the float threshold, and it is far
# more sensitive than the records' (bench/quant_quality.py): keep it on a max-abs int8 grid.
golf quantize --run "$RUN" --force --set embedding.clip=quantile
golf pack --run "$RUN" --force
golf eval --run "$RUN" --force
golf eval --run "$RUN" --stride 64 --out "artifacts/$RUN/eval-sliding64" --force
golf pack --check "artifacts/$RUN/pack/model.golf"
golf inspect "artifacts/$RUN/eval"
