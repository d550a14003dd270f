"""A finished run's registry record (`robustkd.shared.registry`), written next to the cache it trained on.

A run on a local or fsspec cache writes `<root>/_runs/<key>/<id>.json`; a run on a service URL posts the record
to that service (`POST /v1/runs`, with `ROBUSTKD_API_TOKEN` when set). A record that cannot be written is
logged and skipped: the run itself has finished and its folder holds everything.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from robustkd.shared import registry
from robustkd.shared.layout import default_root, resolve_location
from robustkd.shared.methods import display_name, wise_point

log = logging.getLogger("robustkd.registry")
def record_of(folder: str | Path, *, name: str | None = None, alpha: float | None = None,
              of: str | Path | None = None) -> registry.RunRecord:
    """The record of the evaluated run in `folder` (config.json, metrics.json), named `name` (a bench's name for
    it) or by the method table's `display_name`; a WiSE point's folder holds only metrics.json, and its config is
    that of the run `of` it interpolates (the point is named after that run)."""
    folder = Path(folder)
    config = json.loads((Path(of or folder) / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    label = name or display_name(config)
    return registry.RunRecord(
        id=registry.record_id(folder), cache_key=metrics["cache_key"],
        name=label if alpha is None else wise_point(label, alpha), method=config["method"],
        adapter=config.get("adapter", "full"), seed=config.get("seed", 0), alpha=alpha,
        curve_of=None if alpha is None else label, folder=str(folder.resolve()), host=socket.gethostname(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), config=config, metrics=metrics)


def post(base: str, record: registry.RunRecord, keep_name: bool = False) -> registry.RunRecord:
    """The record as the service wrote it (with `keep_name`, under the name of the record it replaced)."""
    import httpx

    token = os.environ.get("ROBUSTKD_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{base}/v1/runs", content=record.model_dump_json(), timeout=30,
                       params={"keep_name": "true"} if keep_name else None,
                       headers={**headers, "content-type": "application/json"})
    except httpx.HTTPError as e:
        raise OSError(f"POST {base}/v1/runs: {type(e).__name__}: {e}") from None
    if r.status_code >= 400:
        raise OSError(f"POST {base}/v1/runs: HTTP {r.status_code} {r.text[:200]}")
    return registry.RunRecord.model_validate_json(r.content)


def register(folder: str | Path, *, name: str | None = None, alpha: float | None = None,
             of: str | Path | None = None) -> registry.RunRecord | None:
    """Record the evaluated run in `folder` beside its cache (`record_of`), replacing an earlier record of that
    folder (whose name it keeps when `name` is not given: evaluated again by `robustkd eval`, a bench's run keeps
    its bench's name, here or on a service); returns the record, or None (logged) if it could not be written."""
    try:
        rec = record_of(folder, name=name, alpha=alpha, of=of)
        location = resolve_location(rec.config["cache"], default_root())
        if registry.is_service(location):
            rec = post(registry.service_base(location), rec, keep_name=name is None)
        else:
            root = registry.root_of(location)
            rec = registry.keeping_its_name(root, rec) if name is None else rec
            registry.write_run(root, rec)
        return rec
    except (OSError, ValueError, KeyError) as e:
        log.warning("run %s not recorded in the registry: %s: %s", folder, type(e).__name__, e)
        return None
