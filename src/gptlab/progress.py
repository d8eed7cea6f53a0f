"""Progress bars that stay quiet where nobody watches (CI, pipes)."""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm


def quiet() -> bool:
    """Return True when progress bars should be hidden: under ``CI=true`` or ``GPTLAB_QUIET=1``."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("GPTLAB_QUIET") == "1"


def progress(*args: Any, **kwargs: Any) -> tqdm:
    """Return a ``tqdm`` bar (same arguments), disabled under :func:`quiet`."""
    kwargs.setdefault("disable", quiet())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(*args, **kwargs)
