"""Resumable preprocessing: ``.process_state.json`` records which stages are complete,
for which source file (its fingerprint), with which settings, and what their file
outputs held (sha256), so a later run can tell a finished stage from a damaged one.

The record of each source is kept: a failed run on another video in a finished
dataset folder does not erase what the folder's own recording had finished.
"""
import json
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from data_utils.layout import DatasetLayout
from lipsync.core.atomic import write_json_atomic
from lipsync.core.fingerprint import content_digest

log = logging.getLogger("preprocess")

STATE_VERSION = 2
STAGES = ("video", "frames", "audio", "crops", "features")
MAX_SOURCES_KEPT = 4          # records of other recordings run in the same folder


def source_key(fingerprint: Dict) -> str:
    return f"{fingerprint['file']}|{fingerprint['bytes']}|{fingerprint['mtime_ns']}"


class StageState:
    """``.process_state.json``: which stages are complete, for which source and settings."""

    def __init__(self, layout: DatasetLayout, fingerprint: Dict, force: bool):
        self.path = layout.state
        self.root = layout.root
        self.fingerprint = fingerprint
        self.records: Dict[str, Dict] = self._read()
        record = self.records.get(source_key(fingerprint))
        self.stages: Dict[str, Dict] = {} if force or record is None else record["stages"]
        if record is None and self.records:
            log.info("no finished stages recorded for %s: running every stage", fingerprint["file"])

    def _read(self) -> Dict[str, Dict]:
        if not self.path.exists():
            return {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if saved.get("version") == 1 and "source" in saved:           # one source per file before
            return {source_key(saved["source"]): {"source": saved["source"], "stages": saved.get("stages", {})}}
        if saved.get("version") != STATE_VERSION:
            return {}
        return saved.get("sources", {})

    def recorded(self, stage: str, settings: Dict) -> Optional[Dict]:
        """The record of ``stage`` when it finished with these settings (outputs not yet checked)."""
        record = self.stages.get(stage)
        if record is None or record.get("settings") != settings:
            return None
        return record

    def changed_outputs(self, record: Dict) -> List[str]:
        """Names of the file outputs whose content differs from what the stage wrote (or that are gone)."""
        changed = []
        for name, digest in record.get("digests", {}).items():
            path = self.root / name
            if not path.is_file() or content_digest(path) != digest:
                changed.append(name)
        return changed

    def mark_done(self, stage: str, settings: Dict, summary: Dict, seconds: float,
                  files: Iterable[Path] = ()) -> None:
        digests = {str(Path(path).relative_to(self.root)): content_digest(path) for path in files}
        self.stages[stage] = {"settings": settings, "summary": summary, "seconds": round(seconds, 2),
                              "digests": digests}
        key = source_key(self.fingerprint)
        self.records.pop(key, None)
        others = list(self.records.items())[-(MAX_SOURCES_KEPT - 1):]
        self.records = {**dict(others), key: {"source": self.fingerprint, "stages": self.stages}}
        write_json_atomic(self.path, {"version": STATE_VERSION, "sources": self.records})

    def forget_from(self, stage: str) -> None:
        """A stage is being redone: everything after it must be redone too."""
        for later in STAGES[STAGES.index(stage):]:
            self.stages.pop(later, None)
