"""Resumable preprocessing: ``.process_state.json`` records which stages are complete,
for which source file (its fingerprint) and with which settings."""
import json
import logging
from typing import Dict, Optional

from data_utils.layout import DatasetLayout
from lipsync.core.atomic import write_json_atomic

log = logging.getLogger("preprocess")

STATE_VERSION = 1
STAGES = ("video", "frames", "audio", "crops", "features")


class StageState:
    """``.process_state.json``: which stages are complete, for which source and settings."""

    def __init__(self, layout: DatasetLayout, fingerprint: Dict, force: bool):
        self.path = layout.state
        self.fingerprint = fingerprint
        self.stages: Dict[str, Dict] = {}
        if not force and self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except ValueError:
                saved = {}
            if saved.get("version") == STATE_VERSION and saved.get("source") == fingerprint:
                self.stages = saved.get("stages", {})
            elif saved:
                log.info("the source video changed since the last run: redoing every stage")

    def summary_if_done(self, stage: str, settings: Dict, outputs) -> Optional[Dict]:
        """The recorded summary when ``stage`` is complete with these settings, else None.

        ``outputs(summary)`` lists the files the finished stage must have left.
        """
        record = self.stages.get(stage)
        if record is None or record.get("settings") != settings:
            return None
        if not all(path.exists() for path in outputs(record["summary"])):
            return None
        return record["summary"]

    def mark_done(self, stage: str, settings: Dict, summary: Dict, seconds: float) -> None:
        self.stages[stage] = {"settings": settings, "summary": summary, "seconds": round(seconds, 2)}
        write_json_atomic(self.path, {"version": STATE_VERSION, "source": self.fingerprint,
                                      "stages": self.stages})

    def forget_from(self, stage: str) -> None:
        """A stage is being redone: everything after it must be redone too."""
        for later in STAGES[STAGES.index(stage):]:
            self.stages.pop(later, None)
