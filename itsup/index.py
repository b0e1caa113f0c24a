"""A generation's file index, fetched from its target and checked against its manifest.

Restore, verify and the drill read the index the same way, so a damaged or
missing one is reported in the same words by each.
"""

from __future__ import annotations

import hashlib
from typing import Any

from itsup.errors import IntegrityError, NotFoundError
from itsup.manifest import Manifest
from itsup.pipeline.codec import decode_index
from itsup.storage.base import Target


def load_index(target: Target, manifest: Manifest, identities: list[Any]) -> bytes:
    """Fetch the file index, check it against the manifest, decrypt it if needed."""
    ref = manifest.index
    try:
        data = target.get(ref.key)
    except NotFoundError:
        raise IntegrityError(
            f"{manifest.generation}: its file index {ref.key} is missing"
        ) from None
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise IntegrityError(
            f"{manifest.generation}: its file index {ref.key} does not match the manifest"
        )
    return decode_index(data, manifest, identities)
