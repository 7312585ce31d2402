"""Where a sweep keeps its files: a local folder, or a prefix on object storage (``s3://``,
``gs://``, any URI pyarrow has a filesystem for). ``Folder`` is the little the driver needs
of either, with the same crash guarantees on both:

- ``write_atomic``: a reader sees the old content or the new, whole. Locally a temporary file,
  fsynced, renamed and the folder fsynced; on object storage one PUT (an object appears
  whole when its upload completes, and is durable when the call returns).
- ``append_line`` / ``read_lines`` / ``rewrite_lines``: an append-only log. Locally one file,
  each line fsynced when asked. Object storage cannot append, so each line is an object of
  its own, ``NAME.d/GGGGGG-SSSSSSSSS`` (generation, sequence), durable when the PUT returns;
  a rewrite writes the whole log as the first object of the next generation and then
  deletes the older ones, and a reader takes the newest generation only, so a crash between
  the two leaves the log as it was before or after, never half.

Credentials and endpoints come from the environment (the standard ``AWS_*`` variables,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, an instance role) or, for what is
not secret, from ``sweep.storage_filesystem`` (``options``); this module never sees a secret,
so no filesystem object it builds carries one into a pickle.

Plain pyarrow: no Ray, no MLflow."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

# S3 secrets in sweep.storage_filesystem and the standard variables that carry them: the
# driver exports them (``export_secrets``) so that it and the Ray workers it starts read them
# from the environment, as they would an instance role's
from orchestrator.config.secrets import SECRET_OPTIONS

SEGMENTS = ".d"  # suffix of an append-only log's folder on object storage
SCHEMES = {"s3": "s3", "gcs": "gs"}  # pyarrow's type_name -> the URI scheme people write


def is_uri(location: str) -> bool:
    """Whether ``location`` names object storage (``scheme://``) rather than a local path."""
    return "://" in location and not location.startswith("file://")


def absolute(location: str) -> str:
    """A local path made absolute; a URI as it is (without a trailing slash)."""
    if is_uri(location):
        return location.rstrip("/")
    return str(Path(location.removeprefix("file://")).absolute())


def public_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The filesystem options that are not secrets (those come from the environment)."""
    return {k: v for k, v in (options or {}).items() if k not in SECRET_OPTIONS}


def export_secrets(options: dict[str, Any] | None) -> None:
    """Secret options given in the config, as the standard variables of this process (and
    of the Ray workers a local Ray starts from it); a redacted one is left to the
    environment."""
    for key, variable in SECRET_OPTIONS.items():
        value = (options or {}).get(key)
        if value and value != "***":
            os.environ[variable] = str(value)


def filesystem(location: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The pyarrow filesystem for ``location`` and the path in it. ``options`` (non-secret
    keyword arguments of the scheme's filesystem class, e.g. ``endpoint_override``) build
    it explicitly; without them pyarrow resolves the URI from the environment."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), absolute(location)
    extra = public_options(options)
    if not extra:
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path.rstrip("/")
    parts = urllib.parse.urlsplit(location)
    path = (parts.netloc + parts.path).rstrip("/")
    kinds = {"s3": pafs.S3FileSystem, "gs": pafs.GcsFileSystem, "gcs": pafs.GcsFileSystem}
    if parts.scheme not in kinds:
        raise ValueError(f"filesystem options are supported for s3:// and gs://, not {location}")
    return kinds[parts.scheme](**extra), path


def uri_of(fs: Any, path: str) -> str:
    """A location string for ``path`` in ``fs`` (what Ray's checkpoints carry): a local path
    as it is, an object's as ``scheme://bucket/key``."""
    kind = getattr(fs, "type_name", "local")
    if kind == "local":
        return path
    return f"{SCHEMES.get(kind, kind)}://{path.lstrip('/')}"


class Folder:
    """A folder on local disk or object storage, with the few operations a sweep needs and
    the crash guarantees described above. ``str()`` is its location as the user gave it."""

    def __init__(self, location: str, options: dict[str, Any] | None = None) -> None:
        self.location = absolute(location)
        self.options = dict(options or {})
        self.fs, self.path = filesystem(self.location, self.options)
        self.local = not is_uri(self.location)

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"Folder({self.location!r})"

    def __truediv__(self, name: str) -> Folder:
        child = Folder.__new__(Folder)
        child.location = f"{self.location.rstrip('/')}/{name}"
        child.options, child.fs, child.local = self.options, self.fs, self.local
        child.path = f"{self.path.rstrip('/')}/{name}"
        return child

    @property
    def name(self) -> str:
        """The last part of the location."""
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Folder:
        """The folder this one is in."""
        up = Folder.__new__(Folder)
        up.location = self.location.rstrip("/").rsplit("/", 1)[0]
        up.options, up.fs, up.local = self.options, self.fs, self.local
        up.path = self.path.rstrip("/").rsplit("/", 1)[0]
        return up

    def _at(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    # -- reading

    def info(self, name: str = "") -> Any:
        """pyarrow's FileInfo of ``name`` (the folder itself when empty)."""
        return self.fs.get_file_info(self._at(name))

    def is_file(self, name: str) -> bool:
        """Whether ``name`` is a file (an object) here."""
        return bool(self.info(name).type == pafs.FileType.File)

    def is_dir(self, name: str = "") -> bool:
        """Whether ``name`` (or this folder) is a folder; on object storage, a prefix with
        objects under it."""
        return bool(self.info(name).type == pafs.FileType.Directory)

    def read_bytes(self, name: str) -> bytes:
        """A file's content (FileNotFoundError when there is none)."""
        if not self.is_file(name):
            raise FileNotFoundError(2, "no such file", f"{self}/{name}")
        with self.fs.open_input_stream(self._at(name)) as f:
            data: bytes = f.read()
            return data

    def read_text(self, name: str) -> str:
        """A file's content as text."""
        return self.read_bytes(name).decode()

    def children(self) -> list[str]:
        """The names of the folders in this one."""
        if not self.is_dir():
            return []
        found = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(
            i.path.rstrip("/").rsplit("/", 1)[-1]
            for i in found
            if i.type == pafs.FileType.Directory
        )

    # -- writing

    def mkdir(self) -> None:
        """Create this folder (and its parents) where folders exist; a no-op on object
        storage, where a prefix exists once an object is under it."""
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def write_atomic(self, name: str, data: bytes | str) -> None:
        """``name`` holds ``data``, durably: a crash leaves the old content or the new."""
        raw = data.encode() if isinstance(data, str) else data
        if self.local:
            path = Path(self._at(name))
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            fsync_dir(path.parent)
            return
        with self.fs.open_output_stream(self._at(name)) as f:  # one PUT: whole or nothing
            f.write(raw)

    def remove(self, name: str) -> None:
        """Delete a file, or an append-only log, if it is there."""
        if self.local:
            path = Path(self._at(name))
            if path.exists():
                path.unlink()
                fsync_dir(path.parent)
            return
        for target in (self._at(name), self._at(name + SEGMENTS)):
            kind = self.fs.get_file_info(target).type
            if kind == pafs.FileType.File:
                self.fs.delete_file(target)
            elif kind == pafs.FileType.Directory:
                self.fs.delete_dir(target)

    def remove_tree(self, name: str) -> None:
        """Delete a folder and everything in it, if it is there."""
        target = self._at(name)
        if self.fs.get_file_info(target).type == pafs.FileType.Directory:
            self.fs.delete_dir(target)

    def download(self, name: str, local: Path) -> Path:
        """Copy ``name`` (a file or a folder) from here to ``local``; returns ``local``."""
        source = self._at(name)
        if self.fs.get_file_info(source).type == pafs.FileType.Directory:
            local.mkdir(parents=True, exist_ok=True)
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(source, str(local), source_filesystem=self.fs)
        return local

    # -- append-only logs

    def append_line(self, name: str, record: dict[str, Any], sync: bool = True) -> None:
        """One JSON line at the end of the log ``name``; with ``sync``, durable when this
        returns (object storage: always)."""
        line = json.dumps(record) + "\n"
        if self.local:
            path = Path(self._at(name))
            new = not path.exists()
            with path.open("a") as f:
                f.write(line)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            if new and sync:
                fsync_dir(path.parent)
            return
        segments = self._segments(name)
        gen, seq = segments[-1][:2] if segments else (0, -1)
        self._put_segment(name, gen, seq + 1, line)

    def read_lines(self, name: str) -> bytes:
        """The whole log ``name`` (b"" when there is none)."""
        if self.local:
            path = Path(self._at(name))
            return path.read_bytes() if path.is_file() else b""
        segments = self._segments(name)
        if not segments:
            return b""
        newest = segments[-1][0]
        out = []
        for gen, _, key in segments:
            if gen == newest:
                with self.fs.open_input_stream(key) as f:
                    out.append(f.read())
        return b"".join(out)

    def rewrite_lines(self, name: str, text: str) -> None:
        """The log ``name`` holds exactly ``text`` (whole lines), atomically."""
        if self.local:
            self.write_atomic(name, text)
            return
        segments = self._segments(name)
        gen = segments[-1][0] + 1 if segments else 0
        self._put_segment(name, gen, 0, text)
        for old_gen, _, path in segments:  # after the new generation exists: never half
            if old_gen < gen:
                self.fs.delete_file(path)

    def _segments(self, name: str) -> list[tuple[int, int, str]]:
        """(generation, sequence, path) of each object of the log ``name``, in order."""
        found = self.fs.get_file_info(
            pafs.FileSelector(self._at(name + SEGMENTS), allow_not_found=True)
        )
        out = []
        for info in found:
            if info.type != pafs.FileType.File:
                continue
            stem = info.path.rsplit("/", 1)[-1]
            gen, _, seq = stem.partition("-")
            if gen.isdigit() and seq.isdigit():
                out.append((int(gen), int(seq), info.path))
        return sorted(out)

    def _put_segment(self, name: str, gen: int, seq: int, text: str) -> None:
        path = self._at(f"{name}{SEGMENTS}/{gen:06d}-{seq:09d}")
        with self.fs.open_output_stream(path) as f:
            f.write(text.encode())


def as_folder(folder: Path | str | Folder) -> Folder:
    """A folder given as a path, a URI or a folder."""
    return folder if isinstance(folder, Folder) else Folder(str(folder))


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a file created, renamed or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def probe(folder: Folder) -> None:
    """Write and delete a probe object in ``folder``: raises OSError when this process
    cannot (no such bucket, no credentials, no network, read-only)."""
    name = f".orchestrator-probe-{os.getpid()}-{os.urandom(4).hex()}"
    if folder.local:
        where = Path(folder.path)
        while not where.exists() and where != where.parent:
            where = where.parent  # probed where it exists so far: nothing left behind
        if not where.is_dir():
            raise NotADirectoryError(20, "not a folder", str(where))
        path = where / name
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        path.unlink()
        return
    folder.write_atomic(name, b"probe")
    folder.remove(name)


def scratch() -> Path:
    """A fresh local temporary folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix="orchestrator-"))
