"""Deconvnet (Zeiler & Fergus 2014; Captum `Deconvolution`).

Backpropagation where every ReLU passes back the positive part of the gradient, ignoring the forward
sign: R_in = relu(R_out). Per channel by default. Score: the logit by default. One model evaluation.
"""

from __future__ import annotations

from .guided_backprop import GuidedBackprop


class Deconvnet(GuidedBackprop):
    name = "deconvnet"
    title = "Deconvnet"
    reference = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks; Captum Deconvolution"
    description = "Gradient with only positive signals passed back through ReLUs, whatever their input."
    rule = "deconvnet"
    rules_needed = ("deconvnet",)
