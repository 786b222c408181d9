"""Insertion (Petsiuk, Das & Saenko, BMVC 2018, RISE paper section 4.1): how fast the target score
rises as the most relevant pixels are revealed on a substrate.

Start from the substrate (by default the input blurred, the paper's choice, so the start carries no
shape but the same colours) and reveal the input's pixels (features) in order of attribution, most
relevant first, `step` = ceil(P / steps) at a time: scores s_0 (the substrate) .. s_n (the input),
n = ceil(P / step). The value is the area under the curve over the revealed fraction, trapezoid rule:

    AUC = (sum_i s_i - s_0 / 2 - s_n / 2) / n

Higher is better for MoRF. Defaults: 100 steps; substrate blur (an 11 x 11 Gaussian of sigma 5 per
channel, zero padding, as the paper's code) for images and the background mean for tabular models;
MoRF; the request's score. Curves: `scores` [n + 1] and `fractions` [n + 1] (revealed).
"""

from __future__ import annotations

from ..methods.params import Choice, Int
from .curves import BLUR, LERF, MEAN, MORF, ZERO
from .base import positions
from .deletion import Deletion


class Insertion(Deletion):
    name = "insertion"
    title = "Insertion"
    description = "Area under the target score as the most relevant pixels are revealed (higher is better)."
    higher_is_better = True
    params = (
        Int("steps", 100, "insertion steps: ceil(P / steps) pixels or features each", 1,
            lambda lim: positions(lim.model)),
        Choice("substrate", lambda lim: BLUR if lim.model.kind == "image" else MEAN, (ZERO, BLUR, MEAN),
               "what unrevealed pixels show: zero, blur or mean", shown="blur (images), mean (tabular)"),
        Choice("order", MORF, (MORF, LERF), "morf: most relevant first; lerf: least relevant first"),
    )
    reveal = True
