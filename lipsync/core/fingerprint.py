"""What identifies one version of a file: its name, size and modification time.

Every cache that must be redone when its input changes (preprocessing stages,
audio features, exported ONNX models, evaluation scores) keys on this.
"""
from pathlib import Path
from typing import Dict


def file_fingerprint(path) -> Dict:
    """{"file": name, "bytes": size, "mtime_ns": modification time} of ``path`` (which must exist)."""
    path = Path(path)
    stat = path.stat()
    return {"file": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
