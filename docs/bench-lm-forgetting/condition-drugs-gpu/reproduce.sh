# The two reports again from the committed per-row predictions (no training, no caches): `robustkd report` re-runs the
# analysis on the run paths results.json records, which are linked to this folder.   bash reproduce.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
t=$(mktemp -d)
mkdir -p "$t/runs/forget-cd" "$t/runs/forget-cd3" "$t/two" "$t/three"
ln -s "$here" "$t/runs/forget-cd/condition-drugs"
ln -s "$here" "$t/runs/forget-cd3/condition-drugs"
cp "$here/results.json" "$t/two/"
cp "$here/results-ft-3-seeds.json" "$t/three/results.json"
(cd "$t" && robustkd report two >/dev/null 2>&1 && robustkd report three >/dev/null 2>&1)
diff "$t/two/report.md" "$here/report.md"
diff "$t/three/report.md" "$here/report-ft-3-seeds.md"
echo "report.md and report-ft-3-seeds.md reproduced"
