"""What the class-activation-map methods share (pytorch-grad-cam's `BaseCAM` semantics).

A CAM method computes a map at a layer A [K, h, w] for an input x (`layer_map`, a generator of
engine stages: a gradient row, masked or ablated rows); the base makes the answer from it:
ReLU (pytorch-grad-cam always applies it; `relu` false keeps the sign), upsampled bilinearly with
half-pixel centres (torch align_corners=False, cv2 INTER_LINEAR) or left at the layer's size.
Most methods override one small function: `layer_weights` (channel weights, the map being
sum_k w_k A_k) or `cam_image` (the map from activation and gradient).

Options of every CAM, as pytorch-grad-cam's `__call__(aug_smooth, eigen_smooth)`:
- eigen_smooth: the map is the projection of the weighted activations w_k A_k (or the method's
  element-wise product) on their first principal component (centred over the h * w positions, SVD;
  pytorch-grad-cam `get_2d_projection`) instead of their sum over channels.
- aug_smooth: the map is the mean over six augmented inputs (horizontal flip or not, times 0.9, 1
  or 1.1: pytorch-grad-cam's default ttach transforms) of each input's map, ReLU'd (unless relu is
  false: CAM's default), min-max scaled
  ((m - min) / (max - min + 1e-7)), upsampled, scaled again and flipped back, as
  `forward_augmentation_smoothing`; so its values lie in [0, 1] (without it the map is not min-max
  scaled: the renderer normalises for display). Six times the rows (and, for the forward-only
  CAMs, five more predictions to read the augmented inputs' layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator

import numpy as np

from ..config import Settings
from ..onnxgraph.variants.predict import LAYER_OUTPUT
from .base import LAYER_GRADIENTS, LOGIT, Method, MethodContext, ModelView, Result, Stages, prediction_stage
from .gradient_base import finish_map, layer_param, resolve_layer, upsample_param
from .params import Bool, Param

SCALE_EPS = 1e-7                               # pytorch-grad-cam scale_cam_image
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def relu_param(default: bool = True) -> Param:
    return Bool("relu", default, "ReLU of the map (pytorch-grad-cam always applies it)")


def eigen_smooth_param() -> Param:
    return Bool("eigen_smooth", False, "the first principal component of the weighted activations instead of "
                "their sum (pytorch-grad-cam eigen_smooth)")


def aug_smooth_param() -> Param:
    return Bool("aug_smooth", False, "the mean of the min-max scaled maps of 6 augmented inputs (flip x "
                "0.9, 1, 1.1; pytorch-grad-cam aug_smooth): 6 times the rows")


def cam_params(eigen: bool = True) -> tuple[Param, ...]:
    """layer, relu, upsample and the smoothing options (eigen_smooth only where the map is a sum)."""
    return (layer_param(), relu_param(), upsample_param(), *((eigen_smooth_param(),) if eigen else ()),
            aug_smooth_param())


def first_component(maps: np.ndarray) -> np.ndarray:
    """[K, h, w] -> [h, w]: the positions' projection on the first right singular vector of the
    centred [h * w, K] matrix (pytorch-grad-cam get_2d_projection; NaNs as 0). Its sign is the SVD's."""
    k, h, w = maps.shape
    flat = np.nan_to_num(np.asarray(maps, np.float32), nan=0.0).reshape(k, h * w).T
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return (flat @ vt[0]).reshape(h, w).astype(np.float64)


def min_max(values: np.ndarray) -> np.ndarray:
    """(m - min m) / (max(m - min m) + 1e-7), pytorch-grad-cam's scale_cam_image."""
    shifted = values - values.min()
    return shifted / (SCALE_EPS + shifted.max())


def width_axis(model: ModelView) -> int:
    """The width axis of one example ([C, H, W] or [H, W, C])."""
    return 2 if model.signature.layout == "NCHW" else 1


def augment(x: np.ndarray, flip: bool, factor: float, model: ModelView) -> np.ndarray:
    flipped = np.flip(x, axis=width_axis(model)) if flip else x
    return np.ascontiguousarray(flipped * np.float32(factor), np.float32)


@dataclass
class LayerMap:
    """A CAM at the layer's resolution [h, w] (before ReLU) and the method's arrays for it."""

    cam: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


MapStages = Generator[Any, Any, LayerMap]


class BaseCam(Method):
    """A class-activation map at a layer, with pytorch-grad-cam's eigen_smooth and aug_smooth."""

    needs = LAYER_GRADIENTS
    kinds = frozenset({"image"})
    default_score = LOGIT
    params = cam_params()
    reads_prediction_layer = False  # the unaugmented input's activation comes with the prediction

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        params["layer"] = resolve_layer(params, self.name, model)
        return params

    def prediction_layer(self, params: dict[str, Any]) -> str:
        return str(params["layer"]) if self.reads_prediction_layer else ""

    def map_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        """Rows one input's map takes (one gradient row by default)."""
        return 1

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        rows = self.map_rows(params, ctx)
        if rows is None or not params.get("aug_smooth"):
            return rows
        return len(AUGMENTATIONS) * rows + (len(AUGMENTATIONS) - 1 if self.reads_prediction_layer else 0)

    def layer_map(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> MapStages:
        """The map of input x at the layer: yields the stages it needs, returns the LayerMap."""
        raise NotImplementedError

    def activation(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> Generator[Any, Any, np.ndarray]:
        """The layer's activation [K, h, w] for x: the prediction's for the request's input, else a
        prediction row of its own."""
        if x is ctx.x and ctx.layer_activation is not None:
            return np.asarray(ctx.layer_activation, np.float32)
        predicted = yield prediction_stage(x, str(params["layer"]))
        return np.asarray(predicted.outputs[LAYER_OUTPUT], np.float32)

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        if not params.get("aug_smooth"):
            found = yield from self.layer_map(ctx.x, params, ctx)
            return Result(finish_map(found.cam, params["relu"], params["upsample"], ctx.model), arrays=found.arrays)
        maps, arrays = [], {}
        for flip, factor in AUGMENTATIONS:
            x = ctx.x if (not flip and factor == 1.0) else augment(ctx.x, flip, factor, ctx.model)
            found = yield from self.layer_map(x, params, ctx)
            cam = np.maximum(found.cam, 0) if params["relu"] else found.cam
            cam = min_max(finish_map(min_max(cam), False, params["upsample"], ctx.model))
            maps.append(np.flip(cam, axis=1) if flip else cam)
            if x is ctx.x:
                arrays = found.arrays
        return Result(np.mean(maps, axis=0), arrays=arrays)


def weighted_map(weights: np.ndarray, activation: np.ndarray, eigen_smooth: bool) -> np.ndarray:
    """sum_k w_k A_k, or with eigen_smooth the first principal component of the w_k A_k."""
    activation = np.asarray(activation, np.float64)
    if eigen_smooth:
        return first_component(weights[:, None, None] * activation)
    return np.tensordot(weights, activation, axes=1)
