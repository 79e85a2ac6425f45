"""Reading numbers the way users type them in configs and ``--set`` overrides."""
from __future__ import annotations

import re
from typing import Any, Optional

# Every decimal float spelling users type (1e-3, 1E-3, .5, 5., -2.5e+4) and nan / inf,
# which YAML 1.1 partly reads as strings.
FLOAT_SPELLING = re.compile(r"[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)",
                            re.IGNORECASE)


def as_float(value: Any) -> Optional[float]:
    """``value`` as a float if it is a number or a float spelling (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and FLOAT_SPELLING.fullmatch(value.strip()):
        return float(value.strip())
    return None
