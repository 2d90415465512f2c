"""A trigger whose arguments are its dataclass fields: declared once, serialized from the declaration.

A trigger must give back, in ``serialize()``, exactly the arguments that rebuild it in
another triggerer (``cls(**kwargs)``); writing each one in the signature, in ``__init__``
and in ``serialize`` invites the one that is forgotten in the third place. Here the
fields are the signature, the attributes and the serialized kwargs.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from airflow.triggers.base import BaseTrigger


class FieldsTrigger(BaseTrigger):
    """Base of the RunComfy triggers: subclasses are ``@dataclass(eq=False, repr=False)``.

    ``eq=False`` keeps identity equality (the triggerer tells triggers apart by object) and
    ``repr=False`` keeps ``BaseTrigger``'s repr (built from ``serialize``).
    """

    def __post_init__(self) -> None:
        BaseTrigger.__init__(self)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and arguments; ``cls(**kwargs)`` rebuilds the trigger after a restart."""
        arguments = {field.name: getattr(self, field.name) for field in fields(self)}  # type: ignore[arg-type]
        return f"{type(self).__module__}.{type(self).__qualname__}", arguments
