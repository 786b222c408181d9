"""What the graph builders need to know about a user's model, independent of the repository."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSignature:
    input_name: str
    output_name: str
    example_shape: tuple[int, ...]  # one example, no batch dim: [C,H,W], [H,W,C] or [F]
    layout: str                     # "NCHW", "NHWC" or "tabular"
    scores: str                     # what the output holds: "logits" or "probabilities"

    @property
    def spatial_shape(self) -> tuple[int, int]:
        if self.layout == "NCHW":
            return self.example_shape[1], self.example_shape[2]
        if self.layout == "NHWC":
            return self.example_shape[0], self.example_shape[1]
        raise ValueError("a tabular model has no spatial shape")

    @property
    def channel_axis(self) -> int:
        """Channel axis of a batched input ([R, ...])."""
        return 1 if self.layout == "NCHW" else 3
