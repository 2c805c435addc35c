"""Typed names for numpy arrays in signatures (what `mypy --strict` asks of a bare np.ndarray).

`Array` holds any dtype: images are float32 in [0, 1] or normalised, labels int64, logits
float32, and each function's docstring says which it takes where it matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Floats = npt.NDArray[np.floating[Any]]
