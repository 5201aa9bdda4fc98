"""The lane task's own keys of ``[models.NAME.train]`` (UFLD-v2's loss), without torch: the matrix loader
validates them through ``LaneTask.train_params`` and the training loop reads them from the config's extras."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LaneTrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label_sigma: float = Field(1.0, ge=0, description="Gaussian soft cell targets (cells); 0 = plain cross-entropy")
    expectation_weight: float = Field(0.05, ge=0, description="weight of UFLD-v2's expectation (mean) loss")

    @classmethod
    def of(cls, config: Any) -> LaneTrainParams:
        """The parameters a TrainConfig carries as its extras (defaults for those it does not)."""
        return cls.model_validate(dict(getattr(config, "model_extra", None) or {}))
