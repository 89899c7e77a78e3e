"""The only module that knows URIs: local paths and object stores (s3://, gs://) behind one small API.

`Location("s3://bucket/prefix")` or `Location("/data/shards")` is a pathlib-like handle that works
the same on both: `/` joins a name, `exists`, `is_file`, `is_dir`, `size`, `iterdir`,
`file_sizes` (names and sizes from one listing), `read_bytes(limit)`, `write_bytes` (atomic),
`upload` / `download` (atomic), `open_read` (seekable), `unlink`, `rmtree`. Nothing else in the
project parses a scheme or imports a filesystem library (a test enforces it).

Object stores go through pyarrow.fs (S3FileSystem, GcsFileSystem), the library Ray Train already
uses for `storage_path`, so one client and one credential chain serve shards, checkpoints and
run outputs: credentials and the endpoint come from the environment or the library's usual
chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_ENDPOINT_URL for an
S3-compatible server such as MinIO or Ceph, ~/.aws, instance metadata; for GCS, the Google
default credentials). A URI carrying credentials (`s3://KEY:SECRET@bucket`) or options
(`?endpoint_override=...`) is refused: such a string would end up in configs, logs and MLflow.
Nothing here runs a shell or a subprocess.

Atomicity. Local writes go to a temporary file beside the target, are fsynced and renamed. An
object store has no rename, and pyarrow completes a multipart upload when its stream is closed,
even after an error, so an object is first written under a temporary name
(`<name>.<token>.tmp`, which no reader pattern matches) and then moved (a server-side copy and
a delete): readers see the old object, the new one, or none, never a part. A temporary left by
a crash is garbage its owner's next run clears.

Filesystem clients are cached per process id: a client created before a fork (a DataLoader
worker) is never reused in the child.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

REMOTE_SCHEMES = ("s3", "gs", "gcs")
TMP_SUFFIX = ".tmp"
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # pipe:, file:, http:, s3: ...
# S3 / GCS bucket names: 3-63 lower-case letters, digits, '.', '-' (and '_' for legacy GCS)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
_COPY_BLOCK = 8 << 20  # bytes per read/write when streaming a file to or from a store
_FILESYSTEMS: dict[tuple[int, str, str], Any] = {}


class StorageError(OSError):
    """A location that cannot be used or reached; the message names it and the way out."""


def is_uri(text: str | Path) -> bool:
    """Whether `text` is written as a URI (`scheme://...`) rather than a local path."""
    return isinstance(text, str) and _URI.match(text) is not None


def location_problem(text: str, key: str) -> str | None:
    """Why the config value `key` = `text` is not a usable location, or None (config checks)."""
    if not isinstance(text, str) or not text:
        return None
    match = _URI.match(text)
    if match is None:
        if _SCHEME_LIKE.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
            return (
                f"{key}: {text!r:.120} looks like a command or URL; give a local path or s3://bucket/prefix"
            )
        return None
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in REMOTE_SCHEMES:
        return (
            f"{key}: {scheme}:// is not a supported store; use a local path (shared across nodes "
            f"when needed) or one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}"
        )
    bucket, _, _ = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        return (
            f"{key}: credentials in a URI end up in configs and logs; give {scheme}://<bucket>/<prefix> "
            f"and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the provider's chain) instead"
        )
    if "?" in rest or "#" in rest:
        return (
            f"{key}: options in the URI are not read; give {scheme}://<bucket>/<prefix> and set "
            f"AWS_ENDPOINT_URL for an S3-compatible endpoint"
        )
    if not _BUCKET.fullmatch(bucket):
        return f"{key}: {bucket!r:.80} is not a bucket name (3-63 of a-z 0-9 . - _)"
    if any(part in (".", "..") for part in rest.split("/")):
        return f"{key}: '.' and '..' are not allowed in an object-store location"
    return None


def absolute(text: str, base: Path) -> str:
    """`text` resolved against `base` unless empty, absolute or a URI."""
    if not text or is_uri(text) or Path(text).is_absolute():
        return text
    return str((base / text).resolve())


def join(base: str, *names: str) -> str:
    """`base` (a path or URI) with `names` appended, as text."""
    return str(Location(base).joinpath(*names))


def _filesystem(scheme: str, bucket: str) -> Any:
    """A cached pyarrow filesystem for one bucket (per process: never shared across a fork)."""
    key = (os.getpid(), scheme, bucket)
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        import pyarrow.fs as pafs

        try:
            fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
        except (OSError, ValueError) as e:
            raise StorageError(
                f"{scheme}://{bucket}: cannot open the store ({_short(e)}); check the bucket name, "
                f"AWS_ENDPOINT_URL and the credentials in the environment"
            ) from e
        _FILESYSTEMS[key] = fs
    return fs


def _short(exc: BaseException) -> str:
    """An exception as one short line (pyarrow's messages may span lines)."""
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


class Location:
    """A file or directory on local disk or in an object store (see the module docstring)."""

    __slots__ = ("uri", "remote", "scheme", "bucket", "key", "_local")

    def __init__(self, text: str | Path | Location):
        if isinstance(text, Location):
            text = text.uri
        text = os.fspath(text)
        problem = location_problem(text, "location")
        if problem:
            raise StorageError(problem.removeprefix("location: "))
        match = _URI.match(text)
        self.remote = match is not None
        if match is None:
            self._local = Path(text)
            self.scheme, self.bucket, self.key = "", "", ""
            self.uri = str(self._local)
        else:
            self.scheme = match.group(1).lower()
            bucket, _, key = match.group(2).partition("/")
            self.bucket, self.key = bucket, "/".join(p for p in key.split("/") if p)
            self._local = None
            self.uri = f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key else "")

    # ---- names ----
    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def joinpath(self, *names: str) -> Location:
        """This location with `names` appended ('/'-separated parts; '.', '..' and empty refused)."""
        parts = [p for name in names for p in str(name).split("/")]
        if any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"{self.uri}: cannot append {'/'.join(map(str, names))!r}")
        if not self.remote:
            return Location(self._local.joinpath(*parts))
        key = "/".join([self.key, *parts] if self.key else parts)
        return Location(f"{self.scheme}://{self.bucket}/{key}")

    def __truediv__(self, name: str) -> Location:
        return self.joinpath(name)

    @property
    def name(self) -> str:
        return self._local.name if not self.remote else self.key.rpartition("/")[2]

    @property
    def parent(self) -> Location:
        if not self.remote:
            return Location(self._local.parent)
        head = self.key.rpartition("/")[0]
        return Location(f"{self.scheme}://{self.bucket}" + (f"/{head}" if head else ""))

    @property
    def local(self) -> Path:
        """The local path; StorageError for an object-store location."""
        if self.remote:
            raise StorageError(f"{self.uri}: an object-store location has no local path")
        return self._local

    # ---- the filesystem behind a remote location ----
    def _fs(self) -> tuple[Any, str]:
        return _filesystem(self.scheme, self.bucket), f"{self.bucket}/{self.key}".rstrip("/")

    def _info(self) -> Any:
        fs, path = self._fs()
        try:
            return fs.get_file_info(path)
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be read ({_short(e)})") from e

    # ---- queries ----
    def exists(self) -> bool:
        if not self.remote:
            return self._local.exists()
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        if not self.remote:
            return self._local.is_file()
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A local directory, or an object-store prefix holding at least one object."""
        if not self.remote:
            return self._local.is_dir()
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        if not self.remote:
            return self._local.stat().st_size
        import pyarrow.fs as pafs

        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{self.uri}: does not exist")
        if info.size is None:
            raise StorageError(f"{self.uri}: not a file")
        return int(info.size)

    def iterdir(self) -> list[Location]:
        """Direct children (files and sub-directories / sub-prefixes), sorted by name; [] if absent."""
        if not self.remote:
            return sorted((Location(p) for p in self._local.iterdir()), key=str) if self.is_dir() else []
        import pyarrow.fs as pafs

        fs, path = self._fs()
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be listed ({_short(e)})") from e
        return sorted((self / info.base_name for info in infos), key=str)

    def file_sizes(self) -> dict[str, int]:
        """{name: bytes} of the files directly inside, sorted by name, from one listing (no request
        per file); sub-directories are left out; {} if absent."""
        if not self.remote:
            sizes = {}
            if self._local.is_dir():
                with os.scandir(self._local) as entries:
                    for entry in entries:
                        try:
                            if entry.is_file():
                                sizes[entry.name] = entry.stat().st_size
                        except FileNotFoundError:
                            continue  # deleted while listed
            return dict(sorted(sizes.items()))
        import pyarrow.fs as pafs

        fs, path = self._fs()
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be listed ({_short(e)})") from e
        return dict(sorted((i.base_name, int(i.size)) for i in infos if i.type == pafs.FileType.File))

    # ---- reading ----
    def read_bytes(self, limit: int | None = None) -> bytes:
        """The whole file; StorageError if it is larger than `limit` bytes (untrusted sizes)."""
        if limit is not None and (size := self.size()) > limit:
            raise StorageError(f"{self.uri}: {size} bytes, more than the {limit} expected")
        if not self.remote:
            return self._local.read_bytes()
        fs, path = self._fs()
        try:
            with fs.open_input_stream(path) as f:
                data = f.read() if limit is None else f.read(limit + 1)
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be read ({_short(e)})") from e
        if limit is not None and len(data) > limit:
            raise StorageError(f"{self.uri}: more than the {limit} bytes expected")
        return data

    def read_text(self, limit: int | None = None) -> str:
        return self.read_bytes(limit).decode("utf-8")

    @contextmanager
    def open_read(self) -> Iterator[IO[bytes]]:
        """A seekable binary file (read, seek, tell); for objects, ranged reads of the store."""
        if not self.remote:
            with open(self._local, "rb") as f:
                yield f
            return
        fs, path = self._fs()
        try:
            f = fs.open_input_file(path)
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be opened ({_short(e)})") from e
        try:
            yield f
        finally:
            f.close()

    def download(self, dest: Path) -> Path:
        """Copy this file to the local `dest` (a temporary beside it, then renamed); returns dest."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            with self.open_read() as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, _COPY_BLOCK)
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, StorageError):
                raise
            raise StorageError(f"{self.uri}: cannot be downloaded to {dest} ({_short(e)})") from e
        return dest

    # ---- writing ----
    def mkdir(self) -> None:
        """Create a local directory (with parents); nothing to do for a prefix of an object store."""
        if not self.remote:
            self._local.mkdir(parents=True, exist_ok=True)

    def _temporary(self) -> Location:
        return self.parent / f"{self.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"

    def write_bytes(self, data: bytes) -> None:
        """Replace the file with `data` atomically (see the module docstring)."""
        if not self.remote:
            _write_local_atomic(self._local, data)
            return
        tmp = self._temporary()
        fs, tmp_path = tmp._fs()
        try:
            with fs.open_output_stream(tmp_path) as out:
                out.write(data)
        except OSError as e:
            tmp.unlink()
            raise StorageError(f"{self.uri}: cannot be written ({_short(e)})") from e
        self._move_from(tmp)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def upload(self, source: Path) -> None:
        """Copy the local file `source` here atomically (streamed, not read into memory)."""
        if not self.remote:
            self._local.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._local.with_name(f"{self._local.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
            try:
                shutil.copyfile(source, tmp)
                _fsync_file(tmp)
                os.replace(tmp, self._local)
            finally:
                tmp.unlink(missing_ok=True)
            return
        tmp = self._temporary()
        fs, tmp_path = tmp._fs()
        try:
            with open(source, "rb") as src, fs.open_output_stream(tmp_path) as out:
                shutil.copyfileobj(src, out, _COPY_BLOCK)
        except OSError as e:
            tmp.unlink()
            raise StorageError(f"{self.uri}: cannot upload {source} ({_short(e)})") from e
        self._move_from(tmp)

    def _move_from(self, tmp: Location) -> None:
        fs, path = self._fs()
        try:
            fs.move(tmp._fs()[1], path)
        except OSError as e:
            tmp.unlink()
            raise StorageError(f"{self.uri}: cannot be written ({_short(e)})") from e

    def unlink(self) -> None:
        """Delete the file if it exists."""
        if not self.remote:
            self._local.unlink(missing_ok=True)
            return
        self._delete("delete_file")

    def rmtree(self) -> None:
        """Delete a directory (prefix) and everything under it, if it exists."""
        if not self.remote:
            shutil.rmtree(self._local, ignore_errors=True)
            return
        self._delete("delete_dir")

    def _delete(self, operation: str) -> None:
        """The store's `delete_file` / `delete_dir` on this location; absent is no error."""
        fs, path = self._fs()
        try:
            getattr(fs, operation)(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if self.exists():
                raise StorageError(f"{self.uri}: cannot be deleted ({_short(e)})") from e


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_local_atomic(path: Path, data: bytes) -> None:
    """Temporary unique to this call beside `path`, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` (itself included) that does not exist yet, or None: what
    to remove to leave nothing behind when creating `path` turns out to have been in vain."""
    missing = None
    for candidate in [Path(path).absolute(), *Path(path).absolute().parents]:
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def write_atomic(path: str | Path | Location, data: bytes | str) -> None:
    """Replace the file at `path` (local or remote) with `data` atomically."""
    Location(path).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
