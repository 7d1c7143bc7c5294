"""ObjectStore contract: the same suite on LocalStore and S3Store (moto or
MinIO over real HTTP, see conftest.py)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import urllib3
from conftest import S3Endpoint, unique_bucket
from minio import Minio

from textft.errors import InvalidArgument, NotFound, Unavailable
from textft_services.common.config import StoreSettings
from textft_services.common.store import PART_SIZE, LocalStore, ObjectStore, S3Store, check_key

pytestmark = pytest.mark.integration


class Unsized(io.RawIOBase):
    """A stream of known content whose length the store is not told, produced
    chunk by chunk (never all in memory), like an upload arriving over gRPC."""

    def __init__(self, total: int, chunk: int = 1024 * 1024) -> None:
        self.remaining = total
        self.chunk = chunk
        self.counter = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.remaining, self.chunk)
        if n == 0:
            return 0
        block = (self.counter.to_bytes(8, "big") * (n // 8 + 1))[:n]
        self.counter += 1
        buffer[:n] = block
        self.digest.update(block)
        self.remaining -= n
        return n


def test_bytes_round_trip(store: ObjectStore) -> None:
    data = bytes(range(256)) * 10
    store.put_bytes("a/b/blob.bin", data)
    assert store.get_bytes("a/b/blob.bin") == data
    assert store.size("a/b/blob.bin") == len(data)
    store.put_bytes("a/b/blob.bin", b"replaced")
    assert store.get_bytes("a/b/blob.bin") == b"replaced"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    assert store.size("empty") == 0


def test_json_round_trip(store: ObjectStore) -> None:
    value = {"name": "datasets/x", "rows": [1, 2, 3], "nested": {"ok": True, "text": "héllo ✓"}}
    store.put_json("datasets/x/dataset.json", value)
    assert store.get_json("datasets/x/dataset.json") == value


def test_put_stream_unknown_length_spans_several_parts(store: ObjectStore) -> None:
    total = PART_SIZE + 1024 * 1024 + 17  # two parts on S3, the last one short
    source = Unsized(total)
    store.put_stream("big/blob.bin", source, -1)
    assert store.size("big/blob.bin") == total
    digest = hashlib.sha256()
    read = 0
    with store.open("big/blob.bin") as f:
        while block := f.read(4 * 1024 * 1024):
            assert len(block) <= 4 * 1024 * 1024
            digest.update(block)
            read += len(block)
    assert read == total
    assert digest.hexdigest() == source.digest.hexdigest()


def test_open_streams_in_pieces(store: ObjectStore) -> None:
    data = os.urandom(300_000)
    store.put_bytes("s/blob", data)
    with store.open("s/blob") as f:
        head = f.read(1000)
        rest = f.read()
    assert head + rest == data
    assert head == data[:1000]


def test_exists_and_size(store: ObjectStore) -> None:
    assert not store.exists("x/y")
    store.put_bytes("x/y", b"12345")
    assert store.exists("x/y")
    assert store.size("x/y") == 5
    # A prefix is not an object.
    assert not store.exists("x")
    with pytest.raises(NotFound):
        store.size("x")


def test_missing_keys_raise_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get_bytes("nope/missing.json")
    with pytest.raises(NotFound):
        store.get_json("nope/missing.json")
    with pytest.raises(NotFound):
        store.open("nope/missing.json")
    with pytest.raises(NotFound):
        store.size("nope/missing.json")
    # Below an object (a file on disk, a plain key on S3): still just missing.
    store.put_bytes("file", b"x")
    with pytest.raises(NotFound):
        store.open("file/child")
    with pytest.raises(NotFound):
        store.size("file/child")
    assert not store.exists("file/child")


def test_list_sorted_recursive_and_prefix_exact(store: ObjectStore) -> None:
    keys = ["b/2", "a/x/deep/1", "a/1", "ab/1", "a/x/0", "a.json", "c"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert list(store.list()) == sorted(keys)
    assert list(store.list("a/")) == ["a/1", "a/x/0", "a/x/deep/1"]
    # A prefix is a string prefix, the same on both backends.
    assert list(store.list("a")) == ["a.json", "a/1", "a/x/0", "a/x/deep/1", "ab/1"]
    assert list(store.list("a/x/")) == ["a/x/0", "a/x/deep/1"]
    assert list(store.list("a/x/deep/1")) == ["a/x/deep/1"]
    assert list(store.list("zzz/")) == []


def test_delete(store: ObjectStore) -> None:
    store.put_bytes("d/one", b"1")
    store.put_bytes("d/two", b"2")
    store.delete("d/one")
    assert not store.exists("d/one")
    assert list(store.list("d/")) == ["d/two"]
    store.delete("d/one")  # absent: no error
    store.delete("never/there")
    store.delete("d")  # a prefix, not an object: nothing to delete
    assert list(store.list("d/")) == ["d/two"]
    store.delete("d/two")
    assert list(store.list()) == []
    store.put_bytes("d/again", b"3")  # the pruned prefix is usable again
    assert store.get_bytes("d/again") == b"3"


def test_delete_prefix(store: ObjectStore) -> None:
    for key in ["m/v1/a", "m/v1/b/c", "m/v10/a", "m/v2/a"]:
        store.put_bytes(key, b".")
    assert store.delete_prefix("m/v1/") == 2
    assert list(store.list()) == ["m/v10/a", "m/v2/a"]
    assert store.delete_prefix("m/v1/") == 0


def test_upload_and_download_dir(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "adapter"
    (src / "sub" / "deeper").mkdir(parents=True)
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": os.urandom(70_000),
        "sub/tokenizer.json": b"{}",
        "sub/deeper/empty.txt": b"",
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    keys = store.upload_dir(src, "models/m/versions/v1/adapter/")
    assert keys == sorted(f"models/m/versions/v1/adapter/{rel}" for rel in files)
    assert list(store.list("models/m/versions/v1/adapter/")) == keys

    dest = tmp_path / "out"
    paths = store.download_dir("models/m/versions/v1/adapter", dest)
    assert sorted(p.relative_to(dest).as_posix() for p in paths) == sorted(files)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert not list(dest.rglob("*.part"))

    with pytest.raises(NotFound):
        store.download_dir("models/m/versions/none", tmp_path / "none")


BAD_KEYS = [
    "",
    "../escape",
    "a/../../escape",
    "a/..",
    "..",
    "./a",
    "a/./b",
    "/etc/passwd",
    "/abs/key",
    "a//b",
    "dir\\file",
    "..\\..\\windows",
    "C:\\temp\\x",
    "new\nline",
    "trailing-newline\n",
    "tab\tkey",
    "nul\x00byte",
    "esc\x1b[31m",
    "del\x7f",
    "trailing/",
    "a/b/",
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidArgument):
        check_key(key)
    with pytest.raises(InvalidArgument):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidArgument):
        store.get_bytes(key)
    with pytest.raises(InvalidArgument):
        store.open(key)
    with pytest.raises(InvalidArgument):
        store.size(key)
    with pytest.raises(InvalidArgument):
        store.exists(key)
    with pytest.raises(InvalidArgument):
        store.delete(key)
    assert list(store.list()) == []


def test_local_store_never_writes_outside_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    for key in ["../outside", "/tmp/outside", "..\\outside", "a/../../outside"]:
        with pytest.raises(InvalidArgument):
            store.put_bytes(key, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_download_dir_refuses_hostile_keys_written_by_other_tools(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    """A key that is not a valid store key (here `//` making the rest an
    absolute path), put into the bucket by another S3 client, must not let
    download_dir write outside the destination directory."""
    store = S3Store(s3_endpoint.settings(unique_bucket()))
    store.put_bytes("adapters/a/ok.json", b"{}")
    target = tmp_path / "escaped.txt"
    hostile = "adapters/a/" + str(target)  # adapters/a//tmp/.../escaped.txt
    store.client.put_object(store.bucket, hostile, io.BytesIO(b"pwned"), 5)
    assert hostile in list(store.list("adapters/a/"))
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(InvalidArgument):
        store.download_dir("adapters/a", dest)
    assert not target.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)  # "quickly": a refused connection is not retried for minutes
def test_s3_unreachable_is_unavailable_quickly_without_secrets() -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    settings = StoreSettings(
        kind="s3", endpoint=f"127.0.0.1:{_closed_port()}", access_key="user-key", secret_key=secret, bucket="textft"
    )
    with pytest.raises(Unavailable) as info:
        S3Store(settings)
    error = info.value
    assert error.retryable
    assert secret not in str(error)
    assert secret not in repr(error)
    assert settings.endpoint in error.message


def test_s3_store_losing_its_endpoint_raises_unavailable(s3_endpoint: S3Endpoint) -> None:
    """Operations of a store whose endpoint goes away map to Unavailable, not a raw urllib3 error."""
    store = S3Store(s3_endpoint.settings(unique_bucket()))
    store.put_bytes("k", b"v")
    store.settings = replace(store.settings, endpoint=f"127.0.0.1:{_closed_port()}")
    store.client = Minio(
        store.settings.endpoint,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        secure=False,
        region=s3_endpoint.region,
        http_client=urllib3.PoolManager(retries=urllib3.Retry(total=0)),
    )
    operations = {
        "get_bytes": lambda: store.get_bytes("k"),
        "size": lambda: store.size("k"),
        "exists": lambda: store.exists("k"),
        "list": lambda: list(store.list()),
        "put_bytes": lambda: store.put_bytes("k2", b"v"),
        "delete": lambda: store.delete("k"),
    }
    for name, op in operations.items():
        with pytest.raises(Unavailable):
            op()
            pytest.fail(f"{name} did not raise")


@pytest.fixture()
def local_store(tmp_path: Path) -> Iterator[LocalStore]:
    yield LocalStore(tmp_path / "store")


def test_local_store_hides_unfinished_temp_files(local_store: LocalStore) -> None:
    class Exploding(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise OSError("client went away")

    local_store.put_bytes("k/old", b"old")
    with pytest.raises(OSError):
        local_store.put_stream("k/old", Exploding())
    assert local_store.get_bytes("k/old") == b"old"  # the failed write did not replace it
    assert list(local_store.list()) == ["k/old"]
    assert [p.name for p in (local_store.root / "k").iterdir()] == ["old"]  # nor left a temp file


def test_local_store_concurrent_put_and_delete_in_one_prefix(local_store: LocalStore) -> None:
    """delete prunes empty directories; a writer in the same directory at the
    same moment must neither fail nor lose its object."""
    import threading

    errors: list[str] = []

    def churn(worker: int) -> None:
        try:
            for i in range(150):
                key = f"shared/dir/w{worker}-{i}"
                local_store.put_bytes(key, b"x")
                assert local_store.get_bytes(key) == b"x"
                local_store.delete(key)
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(local_store.list()) == []
