# Copy each finished run (its end point and all three WiSE points) of runs/forget-cd-cpu into this folder: metrics,
# per-row predictions, plan and training summary; no checkpoints.   bash copy.sh [RUNS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-runs/forget-cd-cpu/condition-drugs}
mkdir -p "$here/teacher"; cp "$src"/teacher/{metrics.json,planned.json,predictions.npz} "$here/teacher/"
for run in "$src"/*/seed*; do
  n=$(ls -d "$run"/wise/alpha-*/metrics.json 2>/dev/null | wc -l)
  [ -f "$run/metrics.json" ] && [ "$n" = 3 ] || { echo "not finished: ${run#$src/}"; continue; }
  d="$here/${run#$src/}"; mkdir -p "$d"
  cp "$run"/{metrics.json,planned.json,predictions.npz,train_summary.json} "$d/"
  for w in "$run"/wise/alpha-*; do mkdir -p "$d/wise/${w##*/}"; cp "$w"/{metrics.json,predictions.npz} "$d/wise/${w##*/}/"; done
  echo "copied: ${run#$src/}"
done
