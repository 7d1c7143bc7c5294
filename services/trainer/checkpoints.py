"""Training checkpoints in the store, shared by the job (which writes them) and
the service (which decides on restart whether a run can resume).

Layout: models/{m}/versions/{v}/checkpoints/step-{n}/ holds the files the HF
Trainer wrote into its local checkpoint-{n} directory (adapter weights,
optimizer, scheduler, RNG and trainer state), and CHECKPOINT_MARKER, written
last: a step directory without it is an unfinished upload and is ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..common.store import ObjectStore

CHECKPOINT_MARKER = "textft-checkpoint.json"
_STEP_RE = re.compile(r"/step-(\d+)/" + re.escape(CHECKPOINT_MARKER) + "$")
_DIR_RE = re.compile(r"/step-(\d+)/")


def checkpoints_prefix(version_prefix: str) -> str:
    """models/{m}/versions/{v} -> models/{m}/versions/{v}/checkpoints"""
    return f"{version_prefix}/checkpoints"


def complete_steps(store: ObjectStore, prefix: str) -> list[int]:
    """Steps with a complete checkpoint under prefix, ascending."""
    steps = []
    for key in store.list(prefix + "/"):
        match = _STEP_RE.search(key)
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_step(store: ObjectStore, prefix: str) -> int | None:
    steps = complete_steps(store, prefix)
    return steps[-1] if steps else None


def upload(store: ObjectStore, local_dir: Path, prefix: str, step: int, keep: int | None = None) -> str:
    """Uploads one local checkpoint directory as step-{step}, marker last; with
    keep, deletes all but the newest `keep` complete checkpoints.

    Idempotent: a retry after a failure (the store went away mid-upload)
    starts the step over, and the marker only appears once every file is in.
    """
    target = f"{prefix}/step-{step}"
    store.delete_prefix(target + "/")  # a half-written earlier attempt at this step
    files = store.upload_dir(local_dir, target)
    store.put_json(f"{target}/{CHECKPOINT_MARKER}", {"step": step, "files": len(files)})
    prune(store, prefix, keep)
    return target


def prune(store: ObjectStore, prefix: str, keep: int | None) -> None:
    """Deletes all but the newest `keep` complete checkpoints (none without keep).
    Idempotent; unfinished step directories left by an interrupted prune are
    invisible to readers (no marker) and removed by the next prune."""
    if keep is None or keep <= 0:
        return
    complete = complete_steps(store, prefix)
    kept = set(complete[-keep:])
    for old in complete[:-keep]:
        # Marker first: a checkpoint being deleted must never look complete.
        store.delete(f"{prefix}/step-{old}/{CHECKPOINT_MARKER}")
        store.delete_prefix(f"{prefix}/step-{old}/")
    newest = complete[-1] if complete else None
    for key in store.list(prefix + "/"):
        match = _DIR_RE.search(key)
        if match and int(match.group(1)) not in kept and newest is not None and int(match.group(1)) < newest:
            store.delete(key)  # the rest of a step whose marker an interrupted prune already removed


def download(store: ObjectStore, prefix: str, step: int, local_root: Path) -> Path:
    """Downloads step-{step} to local_root/checkpoint-{step} (the name the HF
    Trainer gives its own checkpoints) and returns that directory."""
    target = local_root / f"checkpoint-{step}"
    store.download_dir(f"{prefix}/step-{step}", target)
    marker = target / CHECKPOINT_MARKER
    if marker.exists():
        json.loads(marker.read_text())  # a corrupt marker fails here, loudly
        marker.unlink()
    return target
