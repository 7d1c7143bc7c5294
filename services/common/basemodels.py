"""Where base weights come from: a hub id (passed as is to from_pretrained, the
path users with internet take) or `store://base-models/<name>` (weights kept in
the store, for air-gapped sites), downloaded once into a local cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from textft.errors import InvalidArgument

from .store import ObjectStore

STORE_SCHEME = "store://"
BASE_FIELD = "model_config.pretrained_model_name_or_path"


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def resolve(name_or_uri: str, store: ObjectStore, cache_dir: Path, field: str = BASE_FIELD) -> str:
    """Returns what from_pretrained should be given: a hub id, or a local dir
    (always inside cache_dir, else InvalidArgument naming `field`)."""
    if not name_or_uri.startswith(STORE_SCHEME):
        return name_or_uri
    prefix = name_or_uri[len(STORE_SCHEME) :].strip("/")
    if not prefix.startswith("base-models/") or any(p in {"", ".", ".."} for p in prefix.split("/")):
        raise InvalidArgument.for_field(field, "store URIs have the form store://base-models/<name>")
    target = cache_dir / prefix.removeprefix("base-models/")
    if not _inside(target, cache_dir):  # a symlink in the cache, or a name the syntax check missed
        raise InvalidArgument.for_field(field, f"{name_or_uri} resolves outside the base model cache")
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


def check_subfolder(base_path: str, subfolder: object, field: str) -> None:
    """Refuses a `subfolder` kwarg that would leave the base model: an absolute
    path, a `..`, a backslash or NUL anywhere; for a local base (a store base
    model's directory), a path that resolves outside it, symlinks followed."""
    if subfolder is None or subfolder == "":
        return
    if not isinstance(subfolder, str):
        raise InvalidArgument.for_field(field, "must be a string")
    parts = subfolder.split("/")
    if subfolder.startswith("/") or "\\" in subfolder or "\x00" in subfolder or ".." in parts:
        raise InvalidArgument.for_field(field, f"{subfolder[:80]!r} leaves the base model's directory")
    base = Path(base_path)
    if base.is_dir() and not _inside(base / subfolder, base):
        raise InvalidArgument.for_field(field, f"{subfolder[:80]!r} resolves outside the base model's directory")


def revision_of(config: object, name_or_uri: str) -> str:
    """The hub commit when loaded from the hub; otherwise the store URI."""
    commit = getattr(config, "_commit_hash", None)
    return str(commit) if commit else name_or_uri
