"""The training objectives: autoencoding, language modelling (text continuation),
fine-tuning and recall (continue the context from a place a prompt quotes). Each one's
integer value is its task id (``EncodedPrompt.task``, the row of its marker among the
learned marker embeddings), its lower-case name is its marker (``[AE]``, ``[LM]``,
``[FT]``, ``[RECALL]`` in templates) and it has its own loss columns (``ae_loss``,
``ae_loss_sum``, ``ae_tokens``, ...)."""

from __future__ import annotations

import enum


class Objective(enum.IntEnum):
    AE = 0
    LM = 1
    FT = 2
    # Appended last: earlier checkpoints' marker rows keep their indices.
    RECALL = 3

    @property
    def marker(self) -> str:
        return self.name.lower()

    @property
    def loss_key(self) -> str:
        return f"{self.marker}_loss"

    @property
    def loss_sum_key(self) -> str:
        return f"{self.marker}_loss_sum"

    @property
    def tokens_key(self) -> str:
        return f"{self.marker}_tokens"

    @classmethod
    def from_marker(cls, marker: str) -> "Objective":
        try:
            return cls[marker.upper()]
        except KeyError:
            raise ValueError(f"unknown objective {marker!r}; expected one of "
                             f"{', '.join(MARKERS)}") from None


# Marker names in task-id order.
MARKERS: tuple[str, ...] = tuple(o.marker for o in Objective)
# The markers of every checkpoint written before [RECALL] existed (its first rows).
MARKERS_BEFORE_RECALL: tuple[str, ...] = MARKERS[:Objective.RECALL]
