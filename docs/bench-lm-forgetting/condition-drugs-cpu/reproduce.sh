# The report again from the committed per-row predictions (no training, no caches).   bash reproduce.sh
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/../condition-drugs-gpu/reproduce.sh" forget-cd-cpu "$here"
