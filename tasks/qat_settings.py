"""The settings of a quantization-aware fine-tune, shared by the QAT techniques' configs (read
where torch is not installed; the training itself is tasks/qat.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tasks.config import PositiveInt
from tasks.technique import TechniqueConfig

# activation ranges: observed (moving-average min/max) or learned with the weights (LSQ)
Ranges = Literal["minmax", "learned"]


class QatTrainingConfig(TechniqueConfig):
    """The knobs of the fake-quantized fine-tune, common to the QAT techniques."""

    epochs: PositiveInt = 3
    lr: Annotated[float, Field(gt=0)] = 5e-4
    batch_size: PositiveInt = 64
    # from this epoch on, batch norm uses its running statistics (the folded weights stop moving
    # with each batch's statistics, as they will not move in the int8 model)
    freeze_bn_after: Annotated[int, Field(ge=0)] = 2
    # from this epoch on, activation ranges stay fixed (the last epochs adapt to fixed ranges)
    freeze_observers_after: Annotated[int, Field(ge=0)] = 2

    @model_validator(mode="after")
    def _freezes_within_training(self) -> QatTrainingConfig:
        for knob in ("freeze_bn_after", "freeze_observers_after"):
            if getattr(self, knob) > self.epochs:
                raise ValueError(f"{knob} must be at most epochs ({self.epochs})")
        return self
