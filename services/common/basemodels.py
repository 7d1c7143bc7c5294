"""Where base weights come from: a hub id (passed as is to from_pretrained, the
path users with internet take) or `store://base-models/<name>` (weights kept in
the store, for air-gapped sites), downloaded once into a local cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .store import ObjectStore

STORE_SCHEME = "store://"


def resolve(name_or_uri: str, store: ObjectStore, cache_dir: Path) -> str:
    """Returns what from_pretrained should be given: a hub id, or a local dir."""
    if not name_or_uri.startswith(STORE_SCHEME):
        return name_or_uri
    prefix = name_or_uri[len(STORE_SCHEME) :].strip("/")
    target = cache_dir / prefix.removeprefix("base-models/")
    if (target / ".complete").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the target and rename: concurrent jobs never see half a model.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".dl-"))
    try:
        store.download_dir(prefix, tmp)
        (tmp / ".complete").write_text(name_or_uri)
        try:
            os.rename(tmp, target)
        except OSError:  # another job finished first
            if not (target / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def revision_of(config: object, name_or_uri: str) -> str:
    """The hub commit when loaded from the hub; otherwise the store URI."""
    commit = getattr(config, "_commit_hash", None)
    return str(commit) if commit else name_or_uri
