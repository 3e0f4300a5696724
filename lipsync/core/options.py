"""One way to turn command-line arguments into a stage's options.

A stage's options are a dataclass whose defaults are the user guide's. Scripts
build their parser from it and read the parsed arguments back with
``from_args``; library callers construct the dataclass directly::

    @dataclass
    class RenderOptions(Options):
        batch_size: int = 8
    options = RenderOptions.from_args(args)      # every script the same way
"""
import dataclasses
from typing import Any, Dict, TypeVar

T = TypeVar("T", bound="Options")


class Options:
    """Mixin for option dataclasses: ``from_args`` / ``replace`` / ``as_dict``."""

    @classmethod
    def from_args(cls: type, args, **overrides: Any) -> T:
        """The options named in ``args`` (an argparse.Namespace or dict); fields it lacks keep their defaults."""
        given = vars(args) if not isinstance(args, dict) else args
        names = {field.name for field in dataclasses.fields(cls)}
        values = {name: value for name, value in given.items() if name in names}
        values.update(overrides)
        return cls(**values)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def as_typed(value: Any) -> str:
    """An option's value as it is typed on a command line (a list: its items, spaced)."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
