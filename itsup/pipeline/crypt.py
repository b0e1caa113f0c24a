"""age encryption stages (the same format as the `age` command), via pyrage.

pyrage comes from `itsup.agekeys.pyrage_module()` (its import is guarded against
signals), fetched on the calling thread before any worker starts.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from itsup.agekeys import pyrage_module
from itsup.errors import ConfigError, IntegrityError
from itsup.pipeline.stream import Pipe, Worker, Writable


class EncryptingWriter:
    """A writable stage: bytes written here come out age-encrypted downstream."""

    def __init__(self, downstream: Writable, recipients: list[Any]) -> None:
        pyrage = pyrage_module()
        self.pipe = Pipe()
        reader = self.pipe.reader

        def run() -> None:
            try:
                pyrage.encrypt_io(reader, downstream, recipients)
            except BaseException as exc:
                self.pipe.error = exc
                raise

        self.worker = Worker(run, "age-encrypt")
        self.worker.start()

    def write(self, data: bytes) -> int:
        return self.pipe.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.pipe.close()
        self.worker.join_and_raise()


def decrypting_reader(upstream: BinaryIO, identities: list[Any], what: str) -> BinaryIO:
    """Return a stream of the plaintext of an age-encrypted `upstream`."""
    pyrage = pyrage_module()
    pipe = Pipe()

    def run() -> None:
        try:
            pyrage.decrypt_io(upstream, pipe, identities)
        except pyrage.DecryptError as exc:
            text = str(exc)
            if "no matching keys" in text.lower() or "identity" in text.lower():
                pipe.fail(
                    ConfigError(f"{what}: none of the age identities can decrypt it ({text})")
                )
            else:
                pipe.fail(
                    IntegrityError(f"{what}: decryption failed, the object is damaged ({text})")
                )
            return
        except BaseException as exc:
            pipe.fail(exc)
            return
        pipe.close()

    Worker(run, "age-decrypt").start()
    return io.BufferedReader(pipe.reader, 1 << 20)
