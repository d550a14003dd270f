# The report again from the committed per-row predictions (no training, no caches): `robustkd report` re-runs the
# analysis on the run paths results.json records, which are linked to this folder.   bash reproduce.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
t=$(mktemp -d)
mkdir -p "$t/runs/forget-cd" "$t/all"
ln -s "$here" "$t/runs/forget-cd/condition-drugs"
cp "$here/results.json" "$t/all/"
(cd "$t" && robustkd report all >/dev/null 2>&1)
diff "$t/all/report.md" "$here/report.md"
echo "report.md reproduced"
