# The report again from the committed per-row predictions (no training, no caches): `robustkd report` re-runs the
# analysis on the run paths results.json records, which are linked to this folder.   bash reproduce.sh [RUNS FOLDER]
# (condition-drugs-cpu/reproduce.sh runs this on its folder: RUNS is the bench's --out, FOLDER the committed runs.)
set -eu
runs=${1:-forget-cd}; here=${2:-$(cd "$(dirname "$0")" && pwd)}
t=$(mktemp -d)
mkdir -p "$t/runs/$runs" "$t/all"
ln -s "$here" "$t/runs/$runs/condition-drugs"
cp "$here/results.json" "$t/all/"
(cd "$t" && robustkd report all >/dev/null 2>&1)
diff "$t/all/report.md" "$here/report.md"
echo "report.md reproduced"
