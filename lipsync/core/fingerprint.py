"""What identifies one version of a file.

file_fingerprint (name, size, modification time) is what caches that must be redone when
their input changes key on (preprocessing's source video, audio features, exported ONNX
models, evaluation scores); content_digest (sha256) is what a finished preprocessing stage
records of its outputs, so a damaged or replaced output is caught even when its size and
timestamps look right, and a copied dataset still verifies.
"""
import hashlib
from pathlib import Path
from typing import Dict


def file_fingerprint(path) -> Dict:
    """{"file": name, "bytes": size, "mtime_ns": modification time} of ``path`` (which must exist)."""
    path = Path(path)
    stat = path.stat()
    return {"file": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


DIGEST_CHUNK_BYTES = 1 << 20


def content_digest(path) -> str:
    """sha256 of the file's bytes: what it holds, whatever its timestamps (copies keep it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(DIGEST_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
