"""`itsup backup sync --from A --to B` between the real S3 server and a folder.

Complete generations A holds and B lacks are copied in the lifecycle's order
(archive, index, then the manifest once the copy checked out on B), B's
`latest` then names its newest; a second run copies nothing. Between two
prefixes of one S3 service the copy is server-side: no archive byte passes
through itsup (the proxy in front of the server sees CopyObject, no upload). A
generation whose archive does not match its manifest is not copied (exit 5).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import itsup, make_host, run_itsup, s3_secrets, write_config
from s3server import S3Server

from itsup.errors import ExitCode


class Targets:
    """A host with `s3a` and `s3b` (two prefixes of one bucket, reached through a
    proxy that counts requests) and `usb`, a folder."""

    def __init__(self, root: Path, server: S3Server, prefix: str, proxy: FaultProxy) -> None:
        self.root, self.server, self.prefix, self.proxy = root, server, prefix, proxy
        self.usb = root.parent / "usb"
        s3 = "".join(
            f"    {name}:\n"
            f"      url: s3://{server.bucket}/{prefix}{name}\n"
            f"      endpoint: {proxy.url}\n"
            "      access_key_id: ${S3_KEY_ID}\n"
            "      secret_access_key: ${S3_SECRET}\n"
            for name in ("s3a", "s3b")
        )
        write_config(
            root, f"backup:\n  targets:\n{s3}    usb: file://{self.usb}/itsup\n  target: s3a\n"
        )
        s3_secrets(root, server)

    def names(self, target: str) -> list[str]:
        if target == "usb":
            folder = self.usb / "itsup"
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        prefix = f"{self.prefix}{target}/"
        resp = self.server.client().list_objects_v2(Bucket=self.server.bucket, Prefix=prefix)
        return sorted(o["Key"][len(prefix) :] for o in resp.get("Contents", []))

    def complete(self, target: str) -> list[str]:
        suffix = ".manifest.json"
        return [n.removesuffix(suffix) for n in self.names(target) if n.endswith(suffix)]

    def latest(self, target: str) -> str:
        if target == "usb":
            data = (self.usb / "itsup" / "latest.json").read_bytes()
        else:
            key = f"{self.prefix}{target}/latest.json"
            data = (
                self.server.client().get_object(Bucket=self.server.bucket, Key=key)["Body"].read()
            )
        return str(json.loads(data)["generation"])

    def damage(self, target: str, name: str) -> None:
        """Same size, other bytes: only the SHA-256 tells."""
        if target == "usb":
            path = self.usb / "itsup" / name
            data = bytearray(path.read_bytes())
            path.unlink()  # `latest` may share its inode
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            return
        key = f"{self.prefix}{target}/{name}"
        client = self.server.client()
        data = bytearray(client.get_object(Bucket=self.server.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=self.server.bucket, Key=key, Body=bytes(data))

    def sync(self, *args: str, expect: int = 0) -> str:
        res = run_itsup("backup", "sync", *args, root=self.root)
        assert res.code == expect, res.err
        assert "Traceback" not in res.err
        return res.out + res.err

    def verified(self, target: str) -> None:
        report = json.loads(
            itsup(self.root, "backup", "verify", "--all", "--target", target, "--json").out
        )
        assert report["ok"] and all(g["result"] == "ok" for g in report["generations"]), report


@pytest.fixture
def targets(tmp_path: Path, s3_server: S3Server, s3_prefix: str) -> Iterator[Targets]:
    root = make_host(tmp_path / "host")
    with FaultProxy(s3_server.endpoint) as proxy:
        yield Targets(root, s3_server, s3_prefix, proxy)


def test_sync_s3_to_a_folder_and_back_is_idempotent(targets: Targets) -> None:
    itsup(targets.root, "backup")  # backup.target: s3a only
    itsup(targets.root, "backup")
    on_a = targets.complete("s3a")
    assert len(on_a) == 2 and targets.complete("usb") == []
    dry = targets.sync("--from", "s3a", "--to", "usb", "--dry-run")
    assert "would copy 2 generation(s)" in dry and targets.names("usb") == []
    out = targets.sync("--from", "s3a", "--to", "usb")
    assert "(streamed): copied 2 generation(s), 0 already there" in out
    assert targets.complete("usb") == on_a and targets.latest("usb") == on_a[-1]
    targets.verified("usb")
    before = {n: (targets.usb / "itsup" / n).stat().st_mtime_ns for n in targets.names("usb")}
    again = targets.sync("--from", "s3a", "--to", "usb")
    assert "copied 0 generation(s), 2 already there" in again
    assert {n: (targets.usb / "itsup" / n).stat().st_mtime_ns for n in targets.names("usb")} == (
        before
    )
    # a folder to S3: only what S3 lacks
    itsup(targets.root, "backup", "--target", "usb")
    newest = targets.complete("usb")[-1]
    out = targets.sync("--from", "usb", "--to", "s3a")
    assert "copied 1 generation(s), 2 already there" in out
    assert targets.complete("s3a") == [*on_a, newest] and targets.latest("s3a") == newest
    targets.verified("s3a")
    manifest = json.loads(
        targets.server.client()
        .get_object(
            Bucket=targets.server.bucket, Key=f"{targets.prefix}s3a/{newest}.manifest.json"
        )["Body"]
        .read()
    )
    assert manifest["archive"]["key"] == f"{targets.prefix}s3a/{newest}.tar.gz"  # its own keys


def test_sync_within_one_s3_service_copies_server_side(targets: Targets) -> None:
    itsup(targets.root, "backup")
    itsup(targets.root, "backup")
    targets.proxy.seen.clear()
    out = targets.sync("--from", "s3a", "--to", "s3b")
    assert "(server-side copy): copied 2 generation(s)" in out
    ops = Counter(s.operation for s in targets.proxy.seen)
    archive_puts = [
        s for s in targets.proxy.seen if s.operation == "PutObject" and ".tar" in s.path
    ]
    assert ops["CopyObject"] >= 3, ops  # two archives, then latest
    assert not archive_puts and not ops["UploadPart"] and not ops["CreateMultipartUpload"], ops
    assert targets.complete("s3b") == targets.complete("s3a")
    assert targets.latest("s3b") == targets.complete("s3a")[-1]
    targets.verified("s3b")
    targets.proxy.seen.clear()
    assert "copied 0 generation(s), 2 already there" in targets.sync("--from", "s3a", "--to", "s3b")
    writes = {"PutObject", "CopyObject", "UploadPart", "DeleteObject", "CreateMultipartUpload"}
    assert not [s for s in targets.proxy.seen if s.operation in writes]


@pytest.mark.parametrize("source", ["usb", "s3a"])
def test_a_damaged_source_generation_is_not_copied(targets: Targets, source: str) -> None:
    """Streamed (usb -> s3b) it is caught on the way; server-side (s3a -> s3b), by the
    check on the destination, which then deletes what was copied."""
    for _ in range(2):
        itsup(targets.root, "backup", "--target", source)
    older, newer = targets.complete(source)
    targets.damage(source, f"{older}.tar.gz")
    out = targets.sync("--from", source, "--to", "s3b", expect=ExitCode.DAMAGED)
    assert f"{older}  FAILED" in out and "NOT copied" in out
    assert targets.complete("s3b") == [newer] and targets.latest("s3b") == newer
    assert not [n for n in targets.names("s3b") if n.startswith(older)]
    assert targets.server.client().list_multipart_uploads(Bucket=targets.server.bucket).get(
        "Uploads"
    ) in (None, [])


def test_sync_names_two_targets(targets: Targets) -> None:
    res = run_itsup("backup", "sync", "--from", "s3a", "--to", "s3a", root=targets.root)
    assert res.code == ExitCode.USAGE and "two different targets" in res.err
    res = run_itsup("backup", "sync", "--from", "s3a", "--to", "s3c", root=targets.root)
    assert res.code == ExitCode.USAGE and "--to s3c: no target is named 's3c'" in res.err
