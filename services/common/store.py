"""ObjectStore: one small interface, two implementations.

- S3Store: MinIO or any S3-compatible endpoint, through the minio SDK.
- LocalStore: a directory, the embedded default for one machine.

Both pass the same contract tests (tests/test_store.py). Keys are
slash-separated, relative, and never contain `..`: a key can not escape the
bucket or the root directory. Writers that publish several objects write a
manifest last; readers treat an object set without it as unfinished.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO

from textft.errors import InvalidArgument, NotFound, Unavailable

from .config import StoreSettings

_KEY_RE = re.compile(r"[A-Za-z0-9._\-=+@]+(/[A-Za-z0-9._\-=+@]+)*")
PART_SIZE = 8 * 1024 * 1024  # multipart parts: 10,000 of them make 80 GiB
PARALLEL_PARTS = 2  # parts of one upload in flight; memory holds one more, the one being read


def _read_part(stream: BinaryIO, limit: int = PART_SIZE) -> bytearray:
    """Up to limit bytes: fewer only at the end of the stream. Read in place
    into one buffer: joining the pieces a growing spool gives would hold the
    part twice."""
    part = bytearray(limit)
    view, size = memoryview(part), 0
    while size < limit and (n := stream.readinto(view[size:])):  # type: ignore[attr-defined]
        size += n
    view.release()
    if size < limit:
        del part[size:]
    return part


def check_key(key: str) -> str:
    """Refuses keys that could escape the store (absolute, `..`, odd characters)."""
    # fullmatch: `$` would accept a trailing newline; a trailing `/` names a
    # prefix (a directory marker on S3, invisible to list), not an object.
    if not key or not _KEY_RE.fullmatch(key) or any(part in {".", ".."} for part in key.split("/")):
        raise InvalidArgument(f"invalid object key {key!r}", reason="INVALID_OBJECT_KEY")
    return key


class ObjectStore(ABC):
    """What the services need of a blob store, and nothing more."""

    @abstractmethod
    def put_stream(
        self, key: str, stream: BinaryIO, length: int = -1, content_type: str = "application/octet-stream"
    ) -> None:
        """Writes an object from a stream; unknown length (-1) streams in parts, memory bounded."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Opens an object for streaming reads. Raises NotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes. Raises NotFound."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under prefix, recursively, in lexical order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes one object; no error if it is absent."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs (never credentials)."""

    # ---- derived operations, shared by both implementations ----
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.put_stream(key, io.BytesIO(data), len(data), content_type)

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def put_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, json.dumps(value, indent=1, sort_keys=True).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        with open(path, "rb") as f:
            self.put_stream(key, f, os.path.getsize(path))

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with self.open(key) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
        os.replace(tmp, dest)

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)

    def upload_dir(self, local_dir: str | os.PathLike[str], prefix: str) -> list[str]:
        """Uploads every file below local_dir under prefix/ (relative paths kept)."""
        root = Path(local_dir)
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(root).as_posix()}"
            self.put_file(key, path)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> list[Path]:
        """Downloads every object under prefix/ into local_dir. Raises NotFound if none."""
        prefix = prefix.rstrip("/") + "/"
        paths = []
        for key in self.list(prefix):
            dest = Path(local_dir) / key[len(prefix) :]
            self.get_file(key, dest)
            paths.append(dest)
        if not paths:
            raise NotFound(f"nothing stored under {prefix}", reason="OBJECT_NOT_FOUND")
        return paths


class LocalStore(ObjectStore):
    """A directory as an object store. Writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_stream(
        self, key: str, stream: BinaryIO, length: int = -1, content_type: str = "application/octet-stream"
    ) -> None:
        path = self._path(key)
        for attempt in range(10):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
                break
            except (FileNotFoundError, FileExistsError):  # a concurrent delete pruned the parent
                if attempt == 9 or path.parent.is_file():
                    raise
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, 1024 * 1024)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"object {key} not found", reason="OBJECT_NOT_FOUND") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):  # missing, or below a file
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):  # a prefix (directory) is not an object
            raise NotFound(f"object {key} not found", reason="OBJECT_NOT_FOUND")
        return st.st_size

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not path.is_file():  # missing, or a prefix (directory): not an object
            return
        path.unlink(missing_ok=True)
        # Prune empty parents so listings stay tidy; a concurrent writer may
        # fill or remove one first, which ends the pruning.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def describe(self) -> str:
        return f"local directory {self.root}"


class _MinioReader(io.RawIOBase):
    """A file-like view of a minio response that releases the connection on close."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._response.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


class S3Store(ObjectStore):
    """MinIO or any S3-compatible endpoint, through the minio SDK."""

    def __init__(self, settings: StoreSettings) -> None:
        import urllib3
        from minio import Minio

        if not settings.endpoint:
            raise ValueError("S3 store needs MINIO_ENDPOINT (host:port)")
        self.settings = settings
        self.bucket = settings.bucket
        # Short, bounded retries: an unreachable store should surface as
        # UNAVAILABLE within seconds, not hang a request.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=120),
            maxsize=16,
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            settings.endpoint,
            access_key=settings.access_key or None,
            secret_key=settings.secret_key or None,
            secure=settings.secure,
            region=settings.region or None,
            http_client=http,
        )
        self._call(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            from minio.error import S3Error

            try:
                self.client.make_bucket(self.bucket)
            except S3Error as e:  # a concurrent creator won the race
                if e.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def _call(self, fn: Any, *args: Any, key: str = "", **kwargs: Any) -> Any:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as e:
            if e.code in {"NoSuchKey", "NoSuchObject"}:
                raise NotFound(f"object {key} not found", reason="OBJECT_NOT_FOUND") from None
            raise Unavailable(f"object store error ({e.code}) on {key or self.bucket}", reason="STORE_ERROR") from None
        except (HTTPError, OSError) as e:
            raise Unavailable(
                f"object store {self.settings.endpoint} is unreachable ({type(e).__name__}); retry later",
                reason="STORE_UNAVAILABLE",
            ) from None

    def put_stream(
        self, key: str, stream: BinaryIO, length: int = -1, content_type: str = "application/octet-stream"
    ) -> None:
        check_key(key)
        first = _read_part(stream, PART_SIZE if length < 0 else min(length + 1, PART_SIZE))
        if len(first) < PART_SIZE:  # all of it: one PUT
            self._call(self.client.put_object, self.bucket, key, io.BytesIO(first), len(first), content_type, key=key)
            return
        self._call(self._put_parts, key, first, stream, content_type, key=key)

    def _put_parts(self, key: str, first: bytearray, stream: BinaryIO, content_type: str) -> None:
        """A multipart upload with PARALLEL_PARTS parts in flight and none
        queued: the SDK's own parallel upload queues every part it reads ahead
        without bound, so a stream read faster than the store takes it (an
        upload's spool, a local file) would end up in memory. The SDK's
        multipart calls are underscored but have kept their form since 7.0;
        test_store runs this path on a real S3 server."""
        from minio.datatypes import Part

        client = self.client
        upload_id = client._create_multipart_upload(self.bucket, key, {"Content-Type": content_type})
        try:
            sent: list[Future[str]] = []  # each part's etag, in order
            in_flight: set[Future[str]] = set()
            with ThreadPoolExecutor(PARALLEL_PARTS, thread_name_prefix="store-part") as pool:
                data = first
                while data:
                    if len(in_flight) >= PARALLEL_PARTS:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()  # a failed part ends the upload now
                    number = len(sent) + 1
                    sent.append(pool.submit(client._upload_part, self.bucket, key, data, None, upload_id, number))
                    in_flight.add(sent[-1])
                    data = _read_part(stream)
                parts = [Part(n, future.result()) for n, future in enumerate(sent, 1)]
            client._complete_multipart_upload(self.bucket, key, upload_id, parts)
        except BaseException:
            try:
                client._abort_multipart_upload(self.bucket, key, upload_id)
            except Exception:  # the store expires abandoned uploads; the first error is the one to raise
                pass
            raise

    def open(self, key: str) -> BinaryIO:
        response = self._call(self.client.get_object, self.bucket, check_key(key), key=key)
        return io.BufferedReader(_MinioReader(response), 1024 * 1024)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.stat_object, self.bucket, check_key(key), key=key)
            return True
        except NotFound:
            return False

    def size(self, key: str) -> int:
        return int(self._call(self.client.stat_object, self.bucket, check_key(key), key=key).size)

    def list(self, prefix: str = "") -> Iterator[str]:
        objects = self._call(lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True)))
        yield from sorted(o.object_name for o in objects if not o.is_dir)

    def delete(self, key: str) -> None:
        self._call(self.client.remove_object, self.bucket, check_key(key), key=key)

    def describe(self) -> str:
        scheme = "https" if self.settings.secure else "http"
        return f"s3 {scheme}://{self.settings.endpoint}/{self.bucket}"


def open_store(settings: StoreSettings) -> ObjectStore:
    if settings.kind == "s3":
        return S3Store(settings)
    return LocalStore(settings.local_dir)
