"""How a bulk delete's answers are read (`storage/s3delete.py`), and `delete_many`
through the retry wrapper, with a client that answers what each test needs
(the requests themselves are tested on real servers: test_bulk_delete.py)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

from itsup.errors import StorageError
from itsup.storage.base import TransientError
from itsup.storage.local import LocalTarget
from itsup.storage.retry import RetryingTarget
from itsup.storage.s3delete import BulkDelete, add_content_md5


class Client:
    """Answers each DeleteObjects with the next of `answers` (a dict, or an exception)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked: list[list[str]] = []
        self.meta = SimpleNamespace(events=SimpleNamespace(register=lambda *a, **k: None))

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        self.asked.append([o["Key"] for o in Delete["Objects"]])
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def client_error(status: int, code: str) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "no"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "DeleteObjects")


def bulk(client: Client) -> tuple[BulkDelete, list[str]]:
    single: list[str] = []

    def delete_one(key: str) -> None:
        single.append(key)
        if key == "denied":
            raise StorageError(f"t: deleting {key}: AccessDenied: no")

    return BulkDelete(client, "b", "t", delete_one), single


def test_reported_failures_are_the_keys_failures() -> None:
    answer = {
        "Deleted": [{"Key": "a"}],
        "Errors": [
            {"Key": "b", "Code": "AccessDenied", "Message": "Access Denied"},
            {"Key": "c", "Code": "NoSuchKey", "Message": "gone"},
            {"Key": "d", "Code": "SlowDown", "Message": "later"},
        ],
    }
    deleter, single = bulk(Client(answer))
    failures = deleter.delete_many(["a", "b", "c", "d"])
    assert {k: e.message for k, e in failures.items()} == {
        "b": "t: deleting b: AccessDenied: Access Denied"
    }
    assert single == ["d"]  # failed in passing: deleted again on its own
    assert deleter.supported is True


def test_not_implemented_means_single_deletes_from_then_on() -> None:
    deleter, single = bulk(Client(client_error(501, "NotImplemented")))
    assert deleter.delete_many(["a", "denied"]).keys() == {"denied"}
    assert deleter.delete_many(["c"]) == {}
    assert single == ["a", "denied", "c"] and deleter.supported is False


def test_an_answer_that_does_not_account_for_every_key_is_not_trusted() -> None:
    for answer in ({}, {"Deleted": [{"Key": "a"}, {"Key": "elsewhere"}]}):
        client = Client(answer)
        deleter, single = bulk(client)
        assert deleter.delete_many(["a", "b"]) == {}
        assert single == ["a", "b"] and deleter.supported is False
    # Deleted entries without keys (a server's quirk) count when there is one per key.
    deleter, single = bulk(Client({"Deleted": [{}, {}]}))
    assert deleter.delete_many(["a", "b"]) == {} and single == []


def test_a_refused_request_fails_each_of_its_keys() -> None:
    deleter, single = bulk(Client(client_error(403, "AccessDenied")))
    failures = deleter.delete_many(["a", "b"])
    assert [e.message for e in failures.values()] == [
        "t: deleting a: AccessDenied: no",
        "t: deleting b: AccessDenied: no",
    ]
    deleter, single = bulk(Client(EndpointConnectionError(endpoint_url="http://x")))
    assert set(deleter.delete_many(["a"])) == {"a"} and single == []
    deleter, _ = bulk(Client(client_error(404, "NoSuchBucket")))
    assert deleter.delete_many(["a"])["a"].message == "t: bucket b does not exist"


def test_keys_go_in_requests_of_at_most_a_thousand() -> None:
    keys = [f"k{n}" for n in range(2500)]
    answers = [{"Deleted": [{"Key": k} for k in keys[i : i + 1000]]} for i in (0, 1000, 2000)]
    client = Client(*answers)
    deleter, _ = bulk(client)
    assert deleter.delete_many(keys) == {}
    assert [len(asked) for asked in client.asked] == [1000, 1000, 500]


def test_the_content_md5_of_the_body() -> None:
    want = base64.b64encode(hashlib.md5(b"<Delete/>").digest()).decode()
    for body in (b"<Delete/>", "<Delete/>"):
        request = SimpleNamespace(body=body, headers={})
        add_content_md5(request)
        assert request.headers == {"Content-MD5": want}


class FlakyDeletes(LocalTarget):
    def __init__(self, base: Path, failures: int) -> None:
        super().__init__(base)
        self.failures = failures
        self.calls: list[list[str]] = []

    def delete_many(self, keys: Any) -> dict[str, StorageError]:
        self.calls.append(list(keys))
        done = super().delete_many(keys)
        if self.failures:
            self.failures -= 1
            done[keys[0]] = TransientError(f"deleting {keys[0]}: reset")
        return done


def test_keys_that_failed_in_passing_are_deleted_again(tmp_path: Path) -> None:
    inner = FlakyDeletes(tmp_path, failures=2)
    for key in ("a", "b"):
        inner.put(key, b"x")
    pauses: list[float] = []
    target = RetryingTarget(inner, sleep=pauses.append)
    assert target.delete_many(["a", "b"]) == {}
    assert inner.calls == [["a", "b"], ["a"], ["a"]] and len(pauses) == 2
    inner.failures = 99
    assert set(RetryingTarget(inner, retries=1, sleep=pauses.append).delete_many(["a"])) == {"a"}
