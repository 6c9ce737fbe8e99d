"""Shared by the tests of the weight store (compiler/weight_table.py) through each target: an
artifact rewritten with a damaged table, and the damages that must be refused."""

from __future__ import annotations

import json

from compiler.driver.artifact import read_artifact, write_artifact
from compiler.payload import StoredBlob
from compiler.weight_table import WEIGHTS_FILE, WEIGHTS_TABLE


def rewrite_weight_table(src, dst, change) -> None:
    """Copy artifact ``src`` to ``dst`` with ``change`` applied to its weights table (the
    ``tensors`` dict), hashes redone: an artifact that passes the integrity check but lies about
    its offsets."""
    manifest, payload = read_artifact(src)
    table = json.loads(payload[WEIGHTS_TABLE])
    change(table["tensors"])
    payload[WEIGHTS_TABLE] = json.dumps(table).encode()
    entry = payload[WEIGHTS_FILE]
    payload[WEIGHTS_FILE] = StoredBlob([(0, entry.read())], entry.size)
    keep = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "payload")}
    write_artifact(dst, keep, payload)


# (damage to one tensor's entry, the error it must raise)
DAMAGED_ENTRIES = [
    (lambda e: e.update(offset=1 << 40), "does not fit"),
    (lambda e: e.update(offset=-64), "does not fit"),
    (lambda e: e.update(length=e["length"] * 2), "does not fit"),
    (lambda e: e.update(shape=[1 << 30, 1 << 30]), "does not fit"),
    (lambda e: e.update(dtype="object"), "malformed entry"),
    (lambda e: e.update(offset="0"), "malformed entry"),
]
