"""The pure parts of bucket hardening: lifecycle rules and their comparison, the
retention horizon the expiry must not cut into, and the lifecycle settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from itsup.actions.bucket import (
    lifecycle_matches,
    lifecycle_rules,
    retention_horizon,
)
from itsup.config import LifecycleConfig, S3Config


def test_the_spec_numbers_are_the_defaults() -> None:
    rules = {r["ID"]: r for r in lifecycle_rules("itsup/", LifecycleConfig())}
    gen = rules["itsup-generations:itsup/"]
    assert gen["Filter"] == {"Prefix": "itsup/backup-"}
    assert gen["Transitions"] == [
        {"Days": 30, "StorageClass": "STANDARD_IA"},
        {"Days": 90, "StorageClass": "GLACIER"},
    ]
    assert gen["Expiration"] == {"Days": 365}
    versions = rules["itsup-versions:itsup/"]
    assert versions["Filter"] == {"Prefix": "itsup/"}
    assert versions["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}


def test_no_step_no_generation_rule() -> None:
    lc = LifecycleConfig(ia_days=None, glacier_days=None, expire_days=None)
    assert [r["ID"] for r in lifecycle_rules("", lc)] == ["itsup-versions:"]


def test_rules_compare_however_the_server_spells_them() -> None:
    wanted = lifecycle_rules("itsup/", LifecycleConfig())
    spelt = [dict(r) for r in wanted]
    spelt[0] = {**spelt[0], "Transitions": list(reversed(spelt[0]["Transitions"]))}
    spelt[1] = {**spelt[1], "Expiration": {"ExpiredObjectDeleteMarker": "true"}}
    assert lifecycle_matches([*spelt, {"ID": "theirs"}], wanted)
    changed = [{**spelt[0], "Expiration": {"Days": 400}}, spelt[1]]
    assert not lifecycle_matches(changed, wanted)
    assert not lifecycle_matches(None, wanted)


def test_retention_horizon_reads_whatever_retention_holds() -> None:
    assert retention_horizon(SimpleNamespace()) is None
    assert retention_horizon(SimpleNamespace(retention=None)) is None
    kept = SimpleNamespace(keep_daily=7, keep_monthly=12, keep_yearly=0)
    assert retention_horizon(SimpleNamespace(retention=kept)) == (
        372,
        "backup.retention.keep_monthly: 12",
    )
    yearly = SimpleNamespace(keep_yearly=2, keep_within=30 * 86400)
    assert retention_horizon(SimpleNamespace(retention=yearly))[0] == 732  # type: ignore[index]


def test_lifecycle_and_lock_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="glacier_days"):
        S3Config(bucket="b", lifecycle={"ia_days": 100, "glacier_days": 90})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="greater than or equal to 30"):
        S3Config(bucket="b", lifecycle={"ia_days": 7})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="mode"):
        S3Config(bucket="b", object_lock={"mode": "LEGAL", "days": 1})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="sse: aws:kms"):
        S3Config(bucket="b", kms_key_id="arn:aws:kms:k")
    ok = S3Config(bucket="b", sse="aws:kms", kms_key_id="arn:aws:kms:k", checksum="when_supported")
    assert ok.object_lock is None and ok.lifecycle.expire_days == 365
