"""Logging setup for every script: one format, ``--quiet`` shows warnings only."""
import logging

LOG_FORMAT = "%(asctime)s %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"


def configure_console_logging(quiet: bool = False) -> None:
    """Log INFO (or WARNING with ``quiet``) to the console, once per process; a caller's setup wins."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=LOG_FORMAT,
                            datefmt=LOG_DATE_FORMAT)
