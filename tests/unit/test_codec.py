"""encode and decode are each other's inverse, over any sink and any stream (no storage)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from helpers import make_manifest

from itsup.agekeys import pyrage_module
from itsup.errors import ConfigError, IntegrityError
from itsup.manifest import Entry, Manifest, ObjectRef
from itsup.pipeline.archive import Selection
from itsup.pipeline.codec import decode, decode_index, encode, encode_index


def make_tree(root: Path) -> None:
    (root / "upstream/app/data").mkdir(parents=True)
    (root / "upstream/app/data/db.bin").write_bytes(bytes(range(256)) * 4000)
    (root / "upstream/app/docker-compose.yml").write_text("services: {}\n")
    (root / "proxy/traefik").mkdir(parents=True)
    (root / "proxy/traefik/acme.json").write_text("{}\n")


GENERATION = "backup-2026-01-15-030000"


def manifest(codec: str, encrypted: bool, size: int = 0, sha256: str = "") -> Manifest:
    return make_manifest(
        generation=GENERATION,
        archive=ObjectRef(f"itsup/{GENERATION}.tar.gz", size, sha256),
        compression=codec,
        encryption={"scheme": "age", "recipients": []} if encrypted else None,
    )


def encoded(tmp_path: Path, codec: str, recipients: list[Any]) -> tuple[bytes, list[Entry], Any]:
    make_tree(tmp_path)
    sink, entries = io.BytesIO(), []
    result = encode(
        sink,
        tmp_path,
        Selection(("upstream", "proxy"), (), True),
        codec=codec,
        level=1,
        threads=2,
        recipients=recipients,
        on_entry=entries.append,
    )
    return sink.getvalue(), entries, result


@pytest.mark.parametrize("codec", ["gzip", "none"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
def test_decode_reads_back_what_encode_wrote(tmp_path: Path, codec: str, encrypted: bool) -> None:
    identity = pyrage_module().x25519.Identity.generate()
    recipients = [identity.to_public()] if encrypted else []
    data, entries, result = encoded(tmp_path, codec, recipients)
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result.stats.files == 3
    members, hashed = decode(io.BytesIO(data), manifest(codec, encrypted), [identity])
    seen: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=members, mode="r|") as tar:
        for member in tar:
            content = tar.extractfile(member)
            seen[member.name] = content.read() if content else None
    hashed.drain()
    members.close()
    assert list(seen) == [e.path for e in entries]
    assert seen["proxy/traefik/acme.json"] == b"{}\n"
    assert seen["upstream/app/data/db.bin"] == bytes(range(256)) * 4000
    assert (hashed.size, hashed.sha256.hexdigest()) == (result.size, result.sha256)


def test_a_damaged_stream_is_an_integrity_error_naming_the_archive(tmp_path: Path) -> None:
    data, _, _ = encoded(tmp_path, "gzip", [])
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    members, _ = decode(io.BytesIO(bytes(damaged)), manifest("gzip", False), [])
    with pytest.raises(IntegrityError, match=r"backup-2026-01-15-030000\.tar\.gz"):
        while members.read(1 << 16):
            pass
    members.close()


def test_the_index_is_stored_encrypted_like_the_archive() -> None:
    pyrage = pyrage_module()
    right, wrong = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    stored = encode_index(b"index lines", [right.to_public()])
    assert stored != b"index lines"
    assert decode_index(stored, manifest("gzip", True), [right]) == b"index lines"
    with pytest.raises(ConfigError, match="none of the age identities can decrypt it"):
        decode_index(stored, manifest("gzip", True), [wrong])
    with pytest.raises(IntegrityError, match="cannot decrypt its file index"):
        decode_index(stored[:-20], manifest("gzip", True), [right])
    assert encode_index(b"plain", []) == b"plain"
    assert decode_index(b"plain", manifest("gzip", False), []) == b"plain"
