"""An S3 bucket's own configuration: lifecycle, default encryption, versioning,
public access block, Object Lock; creating the bucket; the server's clock.

`itsup backup setup-bucket` and `doctor` read and write these through
`S3Bucket`; the backup path never does (a host's key need not be allowed to).
Every call raises `BucketError` (a StorageError carrying S3's error code) when
S3 refuses it, so the caller can tell "not configured" (`None` from the
getters), "not allowed" (`AccessDenied`) and "not supported by this provider"
(`NotImplemented`) apart; a server that cannot be reached is a plain
StorageError (exit 6).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from itsup.errors import StorageError
from itsup.storage.s3 import S3Target, content_md5

# What S3 answers when a configuration was never set: the getters return None.
NOT_SET = {
    "NoSuchLifecycleConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
    "NoSuchPublicAccessBlockConfiguration",
    "ObjectLockConfigurationNotFoundError",
    "ObjectLockConfigurationNotFound",
}
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


class BucketError(StorageError):
    """S3 refused a call; `code` is its error code (AccessDenied, NotImplemented, ...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class S3Bucket:
    """The bucket of an S3 target (a bare `S3Target`: its client and bucket name)."""

    def __init__(self, target: S3Target) -> None:
        self.target = target
        self.client = target.client
        self.name = target.bucket

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.name, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "")) or str(
                exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            )
            message = str(err.get("Message", "")).strip()
            raise BucketError(
                f"{self.target.name}: {what}: {code}" + (f": {message}" if message else ""), code
            ) from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.target.name}: {what}: {exc}") from None

    def _get(self, what: str, fn: Any) -> Any:
        try:
            return self._call(what, fn)
        except BucketError as exc:
            if exc.code in NOT_SET:
                return None
            raise

    # -- the bucket itself -----------------------------------------------------------

    def exists(self) -> bool:
        try:
            self._call("checking the bucket", self.client.head_bucket)
        except BucketError as exc:
            if exc.code in {"404", "NoSuchBucket", "NotFound"}:
                return False
            raise
        return True

    def create(self, region: str, object_lock: bool) -> None:
        """Create the bucket, with Object Lock enabled when asked (which also turns
        versioning on; on most providers that is possible only now)."""
        kwargs: dict[str, Any] = {"ObjectLockEnabledForBucket": object_lock}
        if region != "us-east-1":  # S3's one region that takes no location constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._call("creating the bucket", self.client.create_bucket, **kwargs)

    def server_time(self) -> tuple[float, float]:
        """(the server's clock, ours) at one request, from its HTTP Date header."""
        sent = time.time()
        resp = self._call("checking the bucket", self.client.head_bucket)
        local = (sent + time.time()) / 2
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if not date:
            raise StorageError(f"{self.target.name}: the server sent no Date header")
        return email.utils.parsedate_to_datetime(date).timestamp(), local

    # -- configuration: each getter returns None when it was never set --------------

    def lifecycle(self) -> list[dict[str, Any]] | None:
        resp = self._get("reading the lifecycle", self.client.get_bucket_lifecycle_configuration)
        return None if resp is None else list(resp.get("Rules", []))

    def put_lifecycle(self, rules: list[dict[str, Any]]) -> None:
        self._call(
            "setting the lifecycle",
            self.client.put_bucket_lifecycle_configuration,
            LifecycleConfiguration={"Rules": rules},
        )

    def encryption(self) -> dict[str, Any] | None:
        """The default encryption (`ApplyServerSideEncryptionByDefault`) of the first rule."""
        resp = self._get("reading the default encryption", self.client.get_bucket_encryption)
        if resp is None:
            return None
        rules = resp.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        return dict(rules[0].get("ApplyServerSideEncryptionByDefault", {})) if rules else None

    def put_encryption(self, algorithm: str, kms_key_id: str | None) -> None:
        default: dict[str, Any] = {"SSEAlgorithm": algorithm}
        if kms_key_id:
            default["KMSMasterKeyID"] = kms_key_id
        rule: dict[str, Any] = {"ApplyServerSideEncryptionByDefault": default}
        if algorithm == "aws:kms":
            rule["BucketKeyEnabled"] = True  # fewer KMS requests, same protection
        self._call(
            "setting the default encryption",
            self.client.put_bucket_encryption,
            ServerSideEncryptionConfiguration={"Rules": [rule]},
        )

    def versioning(self) -> str:
        """`Enabled`, `Suspended`, or "" for a bucket never versioned."""
        resp = self._call("reading versioning", self.client.get_bucket_versioning)
        return str(resp.get("Status", ""))

    def enable_versioning(self) -> None:
        self._call(
            "turning versioning on",
            self.client.put_bucket_versioning,
            VersioningConfiguration={"Status": "Enabled"},
        )

    def public_access_block(self) -> dict[str, bool] | None:
        resp = self._get("reading the public access block", self.client.get_public_access_block)
        return None if resp is None else dict(resp.get("PublicAccessBlockConfiguration", {}))

    def put_public_access_block(self) -> None:
        self._call(
            "setting the public access block",
            self.client.put_public_access_block,
            PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK,
        )

    def object_lock(self) -> dict[str, Any] | None:
        """`{"enabled": bool, "mode": str | None, "days": int | None}`: whether the bucket
        has Object Lock, and its default retention; None when it has no Object Lock."""
        resp = self._get(
            "reading the Object Lock configuration", self.client.get_object_lock_configuration
        )
        if resp is None:
            return None
        config = resp.get("ObjectLockConfiguration", {})
        retention = config.get("Rule", {}).get("DefaultRetention", {})
        days = retention.get("Days")
        if days is None and retention.get("Years") is not None:
            days = int(retention["Years"]) * 365
        return {
            "enabled": config.get("ObjectLockEnabled") == "Enabled",
            "mode": retention.get("Mode"),
            "days": days,
        }

    def put_object_lock(self, mode: str, days: int) -> None:
        """Object Lock enabled with this default retention. On a bucket created
        without Object Lock, AWS allows this only once versioning is on; many
        S3-compatible providers never do (BucketError)."""
        self._call(
            "setting the Object Lock default retention",
            self.client.put_object_lock_configuration,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
            },
        )

    # -- what the credentials may do ---------------------------------------------------

    def put_probe(self, key: str, data: bytes) -> None:
        """A small object, with Content-MD5 always: a bucket with a default retention
        refuses a write without it, whatever itsup.yml says."""
        self._call(
            f"writing {key}",
            self.client.put_object,
            Key=key,
            Body=data,
            ContentMD5=content_md5(data),
        )

    def get_probe(self, key: str) -> bytes:
        resp = self._call(f"reading {key}", self.client.get_object, Key=key)
        return bytes(resp["Body"].read())

    def list_probe(self, prefix: str) -> list[str]:
        resp = self._call(
            f"listing {prefix}", self.client.list_objects_v2, Prefix=prefix, MaxKeys=1000
        )
        return [str(obj["Key"]) for obj in resp.get("Contents", [])]

    def delete_probe(self, key: str) -> None:
        self._call(f"deleting {key}", self.client.delete_object, Key=key)
