"""Files addressed as URIs, through :mod:`pyarrow.fs`: local paths, ``file://``, ``s3://``
(``s3a://`` and ``s3n://``, Hadoop's names, are the same objects), ``hdfs://``, ``gs://``.

The Spark engine lists its input, reads headers on the executors and writes the Parquet lake
through these functions, so an ``s3a://bucket/lake`` output is written to the bucket, not to a
local folder named so. A local path stays a local path (``LocalFileSystem``).

Credentials and endpoints come from the usual environment of each library: for S3 the AWS
SDK's (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, an instance role),
plus ``AWS_ENDPOINT_URL`` for an S3-compatible server (MinIO, Ceph, a test server), read here
because not every pyarrow build honours it.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
S3_SCHEMES = ("s3", "s3a", "s3n")
S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)
"""The variables that address an S3 store (the driver's are handed to the Spark tasks)."""

_CACHE: dict[tuple[str, str, tuple[str, ...]], pafs.FileSystem] = {}


def is_uri(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://…`` (a local path, even with a colon, is not one)."""
    return isinstance(path, str) and bool(_SCHEME.match(path))


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a URI that is not ``file://``: not reachable with ``open``."""
    return is_uri(path) and urlsplit(str(path)).scheme.lower() != "file"


def local_path(path: str | os.PathLike[str]) -> str:
    """``file:///a/b`` → ``/a/b``; a local path unchanged (made absolute)."""
    s = os.fspath(path)
    if is_uri(s):
        parts = urlsplit(s)
        if parts.scheme.lower() != "file":
            raise ValueError(f"{s} is not a local path")
        return os.path.abspath(parts.path)
    return os.path.abspath(s)


def filesystem(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The file system that holds ``uri`` and the path inside it (one instance per store)."""
    s = os.fspath(uri)
    if not is_remote(s):
        return pafs.LocalFileSystem(), local_path(s)
    parts = urlsplit(s)
    scheme = parts.scheme.lower()
    if scheme in S3_SCHEMES:
        env = tuple(os.environ.get(k, "") for k in S3_ENV)
        key = ("s3", parts.netloc, env)
        fs = _CACHE.get(key)
        if fs is None:
            opts: dict[str, Any] = {}
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                ep = urlsplit(endpoint)
                opts |= {"endpoint_override": ep.netloc or endpoint, "scheme": ep.scheme or "https"}
                if ep.scheme == "http":
                    opts["allow_bucket_creation"] = True
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                opts["region"] = region
            fs = _CACHE[key] = pafs.S3FileSystem(**opts)
        return fs, f"{parts.netloc}{parts.path}".rstrip("/")
    fs, path = pafs.FileSystem.from_uri(s)
    return fs, path.rstrip("/") or "/"


def join(uri: str, *names: str) -> str:
    """``uri`` with ``names`` appended by ``/`` (a local path joined as a path)."""
    if not is_uri(uri):
        return os.path.join(uri, *names)
    return "/".join([uri.rstrip("/"), *[n.strip("/") for n in names]])


def list_files(uri: str) -> list[str]:
    """Every file under ``uri`` (a folder or prefix, walked recursively; a file is itself),
    as URIs of the same scheme, sorted."""
    fs, root = filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    base = uri.rstrip("/")
    out = []
    for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if f.type == pafs.FileType.File:
            out.append(base + f.path[len(root) :])
    return sorted(out)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def read_text(uri: str) -> str | None:
    """A small file's text, or None when it does not exist."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as fh:
            return bytes(fh.read()).decode("utf-8")
    except FileNotFoundError:
        return None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file (on an object store a PUT is atomic; locally via a rename)."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{os.getpid()}.tmp"
        with fs.open_output_stream(tmp) as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as fh:
            fh.write(data)


__all__ = [
    "S3_ENV",
    "exists",
    "filesystem",
    "is_remote",
    "is_uri",
    "join",
    "list_files",
    "local_path",
    "read_text",
    "write_bytes",
]
