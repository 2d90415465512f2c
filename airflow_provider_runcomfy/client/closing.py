"""``Closing``: the ``with`` statement for the objects that hold connections or threads.

The client, the output downloader, the input pre-flight and the input preparer each
own something to release; ``with`` releases it, and so does calling ``close()``.
"""

from __future__ import annotations

from typing import Self


class Closing:
    """``with obj:`` returns ``obj`` and calls ``obj.close()`` on the way out, even after an error."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the object holds; a subclass says what that is."""
        raise NotImplementedError
