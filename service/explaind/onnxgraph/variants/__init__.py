"""Graph variants: the user's model wrapped in the prefix and suffix one kind of work needs.

One module per kind, each a small frozen spec that owns its interface and its graph builder and
registers itself (`base.register`); importing this package registers them all. A new kind is one
new module here and one line below.
"""

from . import (activation_max, blur_path, channel_ablation, channel_masks, coalition, extremal, gradient, meaningful,
               occlusion, predict, ranked, relevance, rise, rows, segments)
from .base import (PROBABILITIES_OUTPUT, RAW_OUTPUT, REGISTRY, SCORE_OUTPUT, VariantInterface, VariantSpec, create,
                   register)

__all__ = ["PROBABILITIES_OUTPUT", "RAW_OUTPUT", "REGISTRY", "SCORE_OUTPUT", "VariantInterface", "VariantSpec",
           "create", "register",
           # the variant modules, imported for their registration
           "activation_max", "blur_path", "channel_ablation", "channel_masks", "coalition", "extremal", "gradient",
           "meaningful", "occlusion", "predict", "ranked", "relevance", "rise", "rows", "segments"]
