"""Read an ndarray-offload remote store (S3-compatible) with numpy and boto3.

A remote store under ``s3://bucket/prefix`` holds ``prefix/meta/K.meta.json``
(one metadata object per entry; an empty object is a removed entry) and
``prefix/data/K.<unique>.npy`` (plain ``.npy`` files). See docs/format.md,
"Remote stores".

    >>> store = RemoteStore("s3://ndo-test/prefix")     # doctest: +SKIP
    >>> store.keys()                                     # doctest: +SKIP
    ['points']
    >>> store.load("points").shape                       # doctest: +SKIP
    (1000, 3)

The endpoint comes from ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT`` (as for the
Rust crate), credentials and region from boto3's usual sources.

Command line: ``python ndoffload_remote.py ls s3://bucket/prefix`` and
``python ndoffload_remote.py dump s3://bucket/prefix NAME OUT.npy``.
"""

import io
import json
import os
import sys
import zlib
from urllib.parse import unquote, urlparse

import boto3
import numpy as np

META_SUFFIX = ".meta.json"
# Bytes object_store percent-encodes in a path part (besides controls and
# non-ASCII bytes).
_ENCODED = set(b'/\\{^}%`]">[~<#|*?')


def encode_part(text):
    """Encodes one path part as the Rust crate's object_store does."""
    out = []
    for b in text.encode("utf-8"):
        if b < 0x20 or b >= 0x7F or b in _ENCODED:
            out.append("%%%02X" % b)
        else:
            out.append(chr(b))
    return "".join(out)


_DEVICES = (
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(10)}
    | {f"LPT{i}" for i in range(10)}
    | {"COM\u00b9", "COM\u00b2", "COM\u00b3", "LPT\u00b9", "LPT\u00b2", "LPT\u00b3"}
)


def is_entry_name(name):
    """Whether ``name`` is a valid entry name (the crate's ``EntryName``
    rules): objects named otherwise are ignored by the store."""
    if name in ("", ".", ".."):
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return False
    if ":" in name or "/" in name or "\\" in name:
        return False
    if name.split(".")[0].rstrip(" ").upper() in _DEVICES:
        return False
    if name.endswith(" ") or name.endswith("."):
        return False
    return len(name.encode("utf-8")) <= 200


def _client():
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    return boto3.client("s3", endpoint_url=endpoint)


class RemoteStore:
    """A read-only view of a remote store."""

    def __init__(self, url, client=None):
        u = urlparse(url)
        if u.scheme not in ("s3", "s3a"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        self.bucket = u.netloc
        self.prefix = u.path.strip("/")
        self.s3 = client or _client()

    def _key(self, rel):
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _meta_objects(self):
        """Yields (entry name, object key, size) of every metadata object."""
        start = self._key("meta/")
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        )
        for page in pages:
            for obj in page.get("Contents", []):
                part = obj["Key"][len(start):]
                if "/" in part or not part.endswith(META_SUFFIX):
                    continue
                name = unquote(part[: -len(META_SUFFIX)])
                # As the store: only valid entry names, in the canonical
                # encoding of their object name (others are ignored).
                if not is_entry_name(name) or encode_part(name + META_SUFFIX) != part:
                    continue
                yield name, obj["Key"], obj["Size"]

    def keys(self):
        """The names of the entries (removed entries excluded), sorted."""
        return sorted(name for name, _, size in self._meta_objects() if size > 0)

    def meta(self, name):
        """The metadata of entry ``name`` (a dict), or ``KeyError``."""
        key = self._key("meta/" + encode_part(name + META_SUFFIX))
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            raise KeyError(name) from None
        if not body:
            raise KeyError(name)
        meta = json.loads(body)
        if meta.get("schema_version") != 1:
            raise ValueError(f"{key}: unsupported schema_version {meta.get('schema_version')!r}")
        remote = meta["ndoffload_remote"]
        if remote.get("version") != 1 or remote.get("name") != name:
            raise ValueError(f"{key}: unexpected ndoffload_remote field {remote!r}")
        return meta

    def entries(self):
        """(name, dtype, shape, size, data object) of every entry."""
        out = []
        for name in self.keys():
            m = self.meta(name)
            r = m["ndoffload_remote"]
            out.append((name, m["dtype"], tuple(m["shape"]), r["size"], r["data"]))
        return out

    def load(self, name):
        """Downloads entry ``name``, checks its size and CRC-32, and returns
        it as a numpy array."""
        m = self.meta(name)
        r = m["ndoffload_remote"]
        data = r["data"]
        if not data.startswith("data/") or "/" in data[5:]:
            raise ValueError(f"{name}: bad data object name {data!r}")
        body = self.s3.get_object(Bucket=self.bucket, Key=self._key(data))["Body"].read()
        if len(body) != r["size"]:
            raise ValueError(f"{name}: data object has {len(body)} bytes, metadata says {r['size']}")
        if zlib.crc32(body) != r["crc32"]:
            raise ValueError(f"{name}: CRC-32 mismatch")
        arr = np.load(io.BytesIO(body), allow_pickle=False)
        if list(arr.shape) != list(m["shape"]) or arr.dtype.str != m["dtype"]:
            raise ValueError(f"{name}: .npy header disagrees with its metadata")
        return arr


def main(argv):
    if len(argv) >= 2 and argv[0] == "ls":
        for name, dtype, shape, size, data in RemoteStore(argv[1]).entries():
            print(json.dumps({"name": name, "dtype": dtype, "shape": list(shape), "size": size, "data": data}))
        return 0
    if len(argv) == 4 and argv[0] == "dump":
        np.save(argv[3], RemoteStore(argv[1]).load(argv[2]), allow_pickle=False)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
