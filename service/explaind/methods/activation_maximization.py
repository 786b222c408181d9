"""Activation maximisation (survey 2.1.4): an input that maximises a class score, or a channel or a
neuron of a named layer, by gradient ascent with the model's own gradients.

Objective S(x): the target class's score (`objective: class`; the logit by default, Simonyan et al.
2014), a channel's mean activation at `layer` (`channel`), or one activation (`neuron`: the channel
at `position` (y, x) of the layer, default its centre). Ascent on parameters p of x = decode(p):

    maximise  S(T_t(decode(p))) - l2 |p|^2

one engine job (one row) per step, each gradient from the graph (onnxgraph/variants/activation_max.py),
then the optimiser's step (Adam, Kingma & Ba 2015, beta 0.9 / 0.999, eps 1e-8, or plain gradient ascent
`sgd`) and the projections below. Parameterisations (`parameterization`):
- `pixel` (default): p is the input in the model's space (Simonyan et al. 2014);
- `fourier` (Olah et al. 2017, "Feature Visualization", as Lucid / lucent's fft_image and
  to_valid_rgb without colour decorrelation): p is a spectrum [C, H, W//2+1, 2], scaled per frequency
  by 1 / max(f, 1 / max(H, W))^decay_power, pixels = sigmoid(irfft2(scaled, norm="ortho") / 4), then the
  model's normalisation; its gradient is the adjoint torch autograd gives for irfft2;
- `generator` (Nguyen et al. 2016, DGN-AM): p is the code of the model's learned prior (model.yaml
  `generator`, an ONNX generator composed in front of the model in the graph: the ascent runs in its
  latent space), clipped to [latent_min, latent_max] after every step (the generator's metadata
  explaind.latent_size, latent_min, latent_max, latent_mean; the shapes demo's codes are ReLU
  outputs, [0, their 99th percentile], as DGN-AM's); the shapes
  demo ships one (demo/train_generator.py).
Regularisers (each off at 0 unless stated):
- `l2` (Simonyan et al. 2014): the penalty above, on p (default 1e-4; 0 with a generator: Adam
  normalises its steps, so on a plateau of the score a small L2 term alone sets their direction);
- Yosinski et al. 2015 ("Understanding Neural Networks Through Deep Visualization"), on pixel
  parameters after each step: `blur_every` k steps a Gaussian blur of sigma `blur_sigma` (pixels) per
  channel; `norm_percentile`: pixels whose norm over channels lies below that percentile set to 0
  (the model space's mean); `contribution_percentile`: pixels whose |sum_c p * grad| lies below it
  set to 0;
- Olah et al. 2017 transformation robustness, each step a seeded random T_t: a shift of up to
  `jitter` pixels per axis, a scale in [1 - scale, 1 + scale], a rotation in [-rotation, rotation]
  degrees, one bilinear warp with zero fill (torch's grid_sample, align_corners=False), its adjoint
  carrying the gradient back; not with `generator`.
Pixel parameters are clipped to the valid range of pixels ([0, 255] / scale, normalised) after each
step (`clip`, default true). Start (`start`): `random` (default): seeded, pixel N(0, 0.01^2) in model
space, fourier N(0, 0.01^2) per coefficient (lucent's sd), generator the codes' mean plus 10% of
latent_max x N(0, 1), clipped; `input`: the request's input (pixel only). Otherwise the request's input
only settles the target when none is given (its top class).
Response: the attribution is the final input in the model's space and layout (feed it back to the
model); with `render`, heatmap_png is that input as an image (its pixels, not a heatmap); arrays
`image` (pixels [H, W, C] in [0, 1]), `score_curve` [steps + 1] (the objective at each step's input, then at the final
untransformed one), `probability_curve` (the target's probability alongside) and, with a generator,
`code`; figures `final_score`, `final_probability`. Defaults: 200 steps of Adam at learning rate 0.05
and L2 1e-4 (0.4 and 0 with a generator), the class logit.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import onnx

from ..config import Settings
from ..engine.job import RowChunk
from ..errors import FailedPrecondition, InvalidArgument
from ..onnxgraph.autodiff import unsupported_operators
from ..onnxgraph.compose import chain
from ..onnxgraph.variants import PROBABILITIES_OUTPUT, SCORE_OUTPUT
from ..onnxgraph.variants.activation_max import IMAGE_OUTPUT, INPUT_GRAD_OUTPUT, PRIOR_SCOPE, ActivationMax, Prior
from ..render.heatmap import encode_png
from .base import (INPUT_GRADIENTS, LOGIT, Method, MethodContext, ModelView, Reducer, Result, Stage, Stages)
from .extremal_perturbation import gaussian_smooth
from .gradient_base import resolve_layer
from .params import IMAGE, Bool, Choice, Float, Int, Ints, Text

OBJECTIVES = ("class", "channel", "neuron")
PARAMETERIZATIONS = ("pixel", "fourier", "generator")
LEARNING_RATE = 0.05
L2 = 1e-4
# A code moves the image less per unit than a pixel: on the demo, after 200 steps, the star class stays
# below 0.4 at 0.05 and reaches ~0.97 at 0.2.
GENERATOR_LEARNING_RATE = 0.4
FOURIER_SD = 0.01          # lucent's fft_image initial spread
FOURIER_MAGIC = 4.0        # lucent divides the image by 4
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
MAX_GENERATOR_BYTES = 64 * 2**20
PRIOR_KEY = "activation_maximization.prior"
PIXEL_ONLY = ("blur_every", "norm_percentile", "contribution_percentile", "jitter", "scale", "rotation")


class ActivationMaximization(Method):
    name = "activation_maximization"
    title = "Activation maximisation"
    reference = ("Simonyan et al. 2014; Yosinski et al. 2015; Olah et al. 2017 (Feature Visualization); "
                 "Nguyen et al. 2016 (DGN-AM)")
    description = ("An input that maximises a class score, a channel or a neuron, by gradient ascent with the "
                   "model's gradients; L2, blur, clipping, jitter/scale/rotation, Fourier or a learned prior.")
    needs = INPUT_GRADIENTS
    kinds = IMAGE
    default_score = LOGIT
    arrays = ("image", "score_curve", "probability_curve", "code")
    figures = ("final_score", "final_probability")
    params = (
        Choice("objective", "class", OBJECTIVES, "class (the target's score) | channel (its mean at layer) | "
               "neuron (one activation at layer)"),
        Text("layer", None, "tensor name of the layer for channel and neuron (GetModel lists them)",
             shown="model.yaml layers.cam, else the last 4-D activation feeding a global pooling"),
        Int("channel", 0, "channel of the layer (channel, neuron)", 0, None),
        Ints("position", None, "neuron: (y, x) in the layer", 0, None, length=(2, 2), shown="the layer's centre"),
        Choice("parameterization", "pixel", PARAMETERIZATIONS, "pixel | fourier (Olah 2017) | "
               "generator (DGN-AM: the model's learned prior)"),
        Int("steps", 200, "ascent steps (one model evaluation each, plus one)", 1, 100_000),
        Float("learning_rate", None, "step size", 0.0, 100.0, exclusive_low=True,
              shown=f"{LEARNING_RATE:g} (pixel, fourier), {GENERATOR_LEARNING_RATE:g} (generator)"),
        Choice("optimizer", "adam", ("adam", "sgd"), "adam | sgd (plain gradient ascent)"),
        Float("l2", None, "L2 penalty weight on the parameters (Simonyan 2014)", 0.0, 100.0,
              shown=f"{L2:g} (pixel, fourier), 0 (generator)"),
        Int("blur_every", 0, "blur the image every k steps (Yosinski 2015; 0: never)", 0, 100_000),
        Float("blur_sigma", 0.5, "that blur's sigma, pixels", 0.0, 100.0, exclusive_low=True),
        Float("norm_percentile", 0.0, "zero pixels whose norm is below this percentile (Yosinski 2015)", 0.0, 100.0,
              exclusive_high=True),
        Float("contribution_percentile", 0.0, "zero pixels whose |x * gradient| is below this percentile "
              "(Yosinski 2015)", 0.0, 100.0, exclusive_high=True),
        Int("jitter", 0, "random shift up to this many pixels per step (Olah 2017)", 0, 10_000),
        Float("scale", 0.0, "random scale in [1 - scale, 1 + scale] per step (Olah 2017)", 0.0, 1.0,
              exclusive_high=True),
        Float("rotation", 0.0, "random rotation in [-rotation, rotation] degrees per step (Olah 2017)", 0.0, 180.0),
        Float("decay_power", 1.0, "fourier: spectrum scaling 1 / f^decay_power", 0.0, 10.0),
        Bool("clip", True, "keep pixels in the valid range after each step (pixel)"),
        Choice("start", "random", ("random", "input"), "random (seeded) | input (the request's input; pixel)"),
    )

    def unavailable(self, model: ModelView) -> str:
        why = super().unavailable(model)
        if not why and model.white_box is not None and model.white_box.exported:
            return "the model exports its own gradient (gradients: exported), which activation maximisation cannot use"
        return why

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        n = self.name
        if params["objective"] == "class":
            for name in ("layer", "position"):
                if params.get(name) is not None:
                    raise InvalidArgument(f"{n}.{name}", "unset with objective class", params[name])
            params.pop("layer", None), params.pop("position", None)
            del params["channel"]
        else:
            params["layer"] = resolve_layer(params, n, model)
            if params["objective"] == "channel" and params.get("position") is not None:
                raise InvalidArgument(f"{n}.position", "unset with objective channel", params["position"])
        kind = params["parameterization"]
        if params.get("learning_rate") is None:
            params["learning_rate"] = GENERATOR_LEARNING_RATE if kind == "generator" else LEARNING_RATE
        if params.get("l2") is None:
            # Adam normalises the step: on a plateau of the score even a small L2 term sets the direction
            # and walks the code back to the mean (the shapes demo's star stayed at 0.35 with 1e-4).
            params["l2"] = 0.0 if kind == "generator" else L2
        if kind == "generator":
            for name in PIXEL_ONLY:
                if params[name]:
                    raise InvalidArgument(f"{n}.{name}", "0 with parameterization generator (it acts on pixels)",
                                          params[name])
            if model.generator_file is None:
                raise FailedPrecondition(f"{n}.parameterization: generator needs a model with a learned prior "
                                         "(model.yaml generator: an ONNX file); this model has none")
            prior = load_prior(model)
            params["latent_size"] = prior.latent_size
        if kind != "fourier":
            del params["decay_power"]
        if params["start"] == "input" and kind != "pixel":
            raise InvalidArgument(f"{n}.start", "random unless parameterization is pixel", params["start"])
        if params["steps"] + 1 > settings.max_rows_per_request:
            raise InvalidArgument(f"{n}.steps", f"at most {settings.max_rows_per_request - 1} (max_rows_per_request)",
                                  params["steps"])
        return params

    def render(self, result: Result, options: Any, image: np.ndarray | None) -> bytes:
        """The synthesised input itself as the PNG (its pixels, the preprocessing undone), not a heatmap."""
        pixels = np.clip(np.round(result.arrays["image"] * 255.0), 0, 255).astype(np.uint8)
        return encode_png(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)

    def prediction_layer(self, params: dict[str, Any]) -> str:
        return params.get("layer") or ""

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["steps"] + 1

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        return (yield from _Ascent(params, ctx).run())


def load_prior(model: ModelView) -> Prior:
    """The model's generator (model.yaml `generator`), read once per model version."""
    def make() -> Prior:
        path = model.generator_file
        where = "activation_maximization.parameterization: the model's generator"
        if path is None:
            raise FailedPrecondition(f"{where} is not configured")
        try:
            size = path.stat().st_size
            raw = path.read_bytes() if size <= MAX_GENERATOR_BYTES else b""
            graph = onnx.load_from_string(raw) if raw else None
        except Exception as exc:  # noqa: BLE001 (an unreadable file is the model's problem, not a bug)
            raise FailedPrecondition(f"{where} cannot be read: {type(exc).__name__}") from None
        if graph is None:
            raise FailedPrecondition(f"{where} is {size} bytes, over the limit of {MAX_GENERATOR_BYTES}")
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
            raise FailedPrecondition(f"{where} may not use external data")
        meta = {p.key: p.value for p in graph.metadata_props}
        try:
            latent = int(meta["explaind.latent_size"])
        except (KeyError, ValueError):
            raise FailedPrecondition(f"{where} has no explaind.latent_size in its metadata") from None
        check_prior(graph, model, where)
        return Prior(hashlib.sha256(raw).hexdigest(), latent, graph)
    return model.derive(PRIOR_KEY, make)


def check_prior(graph: onnx.ModelProto, model: ModelView, where: str) -> None:
    """The generator composes in front of the model and the autodiff differentiates through it."""
    if model.graph is None:
        return
    try:
        composed, code = chain(graph, model.graph, model.signature.input_name, PRIOR_SCOPE)
    except ValueError as exc:
        raise FailedPrecondition(f"{where} cannot be composed in front of the model: {exc}") from None
    blocked = unsupported_operators(composed, model.signature.input_name, [code])
    if blocked:
        raise FailedPrecondition(f"{where} has operators without a gradient rule: "
                                 + ", ".join(sorted({op for op, _ in blocked})))


def _prior_metadata(prior: Prior) -> tuple[float, float, np.ndarray]:
    """(latent_min, latent_max, latent_mean) from the generator's metadata (-inf, inf and zeros where absent)."""
    meta = {p.key: p.value for p in prior.graph.metadata_props}
    low = float(meta.get("explaind.latent_min", "-inf"))
    top = float(meta.get("explaind.latent_max", "inf"))
    mean = (np.array([float(v) for v in meta["explaind.latent_mean"].split(",")], np.float32)
            if "explaind.latent_mean" in meta else np.zeros(prior.latent_size, np.float32))
    if mean.shape != (prior.latent_size,):
        mean = np.zeros(prior.latent_size, np.float32)
    return low, top, mean


# The pieces of one step, in numpy (tests/reference checks them against torch) -----------------------


def rfft_scale(height: int, width: int, decay_power: float) -> np.ndarray:
    """[H, W//2+1] lucent's 1 / max(f, 1 / max(H, W))^decay_power, f = sqrt(fy^2 + fx^2)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    return (1.0 / np.maximum(freqs, 1.0 / max(width, height)) ** decay_power).astype(np.float32)


def fourier_decode(spectrum: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """spectrum [C, H, W//2+1, 2] -> y [C, H, W] = irfft2(scale * spectrum, norm="ortho") / 4 (before the sigmoid)."""
    z = (spectrum[..., 0] + 1j * spectrum[..., 1]) * scale
    return (np.fft.irfft2(z, s=size, norm="ortho") / FOURIER_MAGIC).astype(np.float32)


def fourier_adjoint(grad_y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """d/d spectrum of sum(grad_y * fourier_decode(spectrum)): torch autograd's irfft2 backward (rfft2,
    the columns irfft2 counts twice doubled), times the scale."""
    g = np.fft.rfft2(grad_y.astype(np.float64) / FOURIER_MAGIC, norm="ortho")
    doubled = grad_y.shape[-1] - g.shape[-1]
    if doubled > 0:
        g[..., 1:1 + doubled] *= 2.0
    g = g * scale
    return np.stack([g.real, g.imag], axis=-1).astype(np.float32)


def warp_matrix(height: int, width: int, shift: tuple[float, float], scale: float, angle: float) -> Any:
    """The sparse [H W, H W] bilinear warp of torch's affine_grid + grid_sample (align_corners=False,
    zero padding) with theta = [[cos a / s, -sin a / s, 2 dx / W], [sin a / s, cos a / s, 2 dy / H]]:
    the output at (i, j) samples the input near the point theta maps it to (a shift of (dy, dx)
    pixels, a scale s, a rotation a in radians)."""
    from scipy.sparse import csr_matrix  # lazy: scipy loads at the first warped step
    dy, dx = shift
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    xs = (2 * np.arange(width) + 1) / width - 1
    ys = (2 * np.arange(height) + 1) / height - 1
    gx, gy = np.meshgrid(xs, ys)
    sx = c * gx - s * gy - 2 * dx / width
    sy = s * gx + c * gy - 2 * dy / height
    ix = ((sx + 1) * width - 1) / 2
    iy = ((sy + 1) * height - 1) / 2
    x0, y0 = np.floor(ix), np.floor(iy)
    rows, cols, vals = [], [], []
    out = np.arange(height * width).reshape(height, width)
    for oy, ox in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xk, yk = x0 + ox, y0 + oy
        w = (1 - np.abs(ix - xk)) * (1 - np.abs(iy - yk))
        valid = (xk >= 0) & (xk < width) & (yk >= 0) & (yk < height) & (w > 0)
        rows.append(out[valid])
        cols.append((yk[valid] * width + xk[valid]).astype(np.int64))
        vals.append(w[valid])
    return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(height * width, height * width))


class StepReducer(Reducer):
    """One step's single row: objective, probabilities, gradient (and the generated image)."""

    def __init__(self, preview_of: Any) -> None:
        self.rows: dict[str, np.ndarray] = {}
        self.preview_of = preview_of

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.rows = {k: np.asarray(v[0]) for k, v in rows.items()}

    def preview(self) -> np.ndarray:
        return self.preview_of(self)


class _Ascent:
    """One request's ascent: the parameters, the optimiser's state, one stage per step."""

    def __init__(self, params: dict[str, Any], ctx: MethodContext) -> None:
        self.params, self.ctx = params, ctx
        sig = ctx.model.signature
        self.nchw = sig.layout == "NCHW"
        self.height, self.width = sig.spatial_shape
        self.channels = sig.example_shape[0] if self.nchw else sig.example_shape[2]
        pre = ctx.model.preprocess
        scale = pre.scale if pre else 255.0
        mean = np.asarray(pre.mean if pre and pre.mean is not None else [0.0] * self.channels, np.float32)
        std = np.asarray(pre.std if pre and pre.std is not None else [1.0] * self.channels, np.float32)
        # model = (pixel * 255 / scale - mean) / std, pixel in [0, 1]; per channel, [C, 1, 1]
        self.gain = (255.0 / scale / std).astype(np.float32)[:, None, None]
        self.offset = (-mean / std).astype(np.float32)[:, None, None]
        self.kind = params["parameterization"]
        self.prior = load_prior(ctx.model) if self.kind == "generator" else None
        self.variant = ActivationMax(score=ctx.score, layer=params.get("layer") or "", prior=self.prior)
        self.fourier_scale = (rfft_scale(self.height, self.width, params["decay_power"])
                              if self.kind == "fourier" else None)

    # Images in CHW, whatever the model's layout --------------------------------------------------

    def to_model(self, chw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(chw if self.nchw else chw.transpose(1, 2, 0), np.float32)

    def from_model(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x if self.nchw else x.transpose(2, 0, 1), np.float32)

    def decode(self, p: np.ndarray) -> np.ndarray:
        """The CHW model-space image of parameters p (pixel, fourier; the generator's is made in the graph)."""
        if self.kind == "fourier":
            pixels = 1.0 / (1.0 + np.exp(-fourier_decode(p, self.fourier_scale, (self.height, self.width))))
            return (pixels * self.gain + self.offset).astype(np.float32)
        return p

    def decode_adjoint(self, p: np.ndarray, grad_x: np.ndarray) -> np.ndarray:
        if self.kind == "fourier":
            s = 1.0 / (1.0 + np.exp(-fourier_decode(p, self.fourier_scale, (self.height, self.width))))
            return fourier_adjoint(grad_x * self.gain * s * (1.0 - s), self.fourier_scale)
        return grad_x

    def start(self) -> np.ndarray:
        rng, params = self.ctx.rng, self.params
        if self.kind == "generator":
            low, top, mean = _prior_metadata(self.prior)  # type: ignore[arg-type]
            spread = 0.1 * (top if math.isfinite(top) else 1.0)
            code = mean + spread * rng.standard_normal(mean.shape, dtype=np.float32)
            return np.clip(code, low, top).astype(np.float32)
        if self.kind == "fourier":
            shape = (self.channels, self.height, self.width // 2 + 1, 2)
            return (FOURIER_SD * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        if params["start"] == "input":
            return self.from_model(self.ctx.x).copy()
        return (0.01 * rng.standard_normal((self.channels, self.height, self.width), dtype=np.float32))

    def transform(self) -> Any:
        """This step's random warp (Olah 2017) or None: drawn from the request's generator."""
        params, rng = self.params, self.ctx.rng
        if not (params.get("jitter") or params.get("scale") or params.get("rotation")):
            return None
        j = params["jitter"]
        shift = (float(rng.integers(-j, j + 1)), float(rng.integers(-j, j + 1))) if j else (0.0, 0.0)
        scale = float(rng.uniform(1 - params["scale"], 1 + params["scale"])) if params["scale"] else 1.0
        angle = math.radians(float(rng.uniform(-params["rotation"], params["rotation"]))) if params["rotation"] else 0.0
        return warp_matrix(self.height, self.width, shift, scale, angle)

    def warp(self, matrix: Any, chw: np.ndarray, adjoint: bool = False) -> np.ndarray:
        if matrix is None:
            return chw
        flat = chw.reshape(self.channels, -1)
        out = (matrix.T @ flat.T).T if adjoint else (matrix @ flat.T).T
        return np.asarray(out, np.float32).reshape(chw.shape)

    def constants(self, point: np.ndarray) -> dict[str, np.ndarray]:
        consts = {"x0": point.astype(np.float32), "target": np.array(self.ctx.target, np.int64)}
        if self.params.get("layer"):
            consts["weights"] = self.weights
        return consts

    def layer_weights(self) -> np.ndarray:
        """The objective's weights over the layer's activation [K, h, w] (ctx.layer_activation's shape)."""
        act = self.ctx.layer_activation
        n = ActivationMaximization.name
        if act is None or act.ndim != 3:
            raise FailedPrecondition(f"{n}.layer: its activation is not [channels, height, width]")
        k, h, w = act.shape
        c = self.params["channel"]
        if c >= k:
            raise InvalidArgument(f"{n}.channel", f"a channel in [0, {k - 1}] of layer {self.params['layer']!r}", c)
        weights = np.zeros(act.shape, np.float32)
        if self.params["objective"] == "channel":
            weights[c] = 1.0 / (h * w)
            return weights
        y, x = self.params.get("position") or (h // 2, w // 2)
        if not (0 <= y < h and 0 <= x < w):
            raise InvalidArgument(f"{n}.position", f"(y, x) within the layer's {h} x {w}", [y, x])
        weights[c, y, x] = 1.0
        return weights

    def stage(self, point: np.ndarray) -> Stage[StepReducer]:
        return Stage(self.variant, self.constants(point), iter([{"row": np.zeros(1, np.int64)}]), 1,
                     StepReducer(self._preview), partial_maps=True, eager=True)

    def _preview(self, reducer: StepReducer) -> np.ndarray:
        if IMAGE_OUTPUT in reducer.rows:
            return reducer.rows[IMAGE_OUTPUT]
        return self.to_model(self.current)

    def yosinski(self, p: np.ndarray, grad: np.ndarray, step: int) -> np.ndarray:
        """The pixel regularisers after a step (see the module's docstring)."""
        params = self.params
        if params["blur_every"] and (step + 1) % params["blur_every"] == 0:
            p = gaussian_smooth(p, params["blur_sigma"], (1, 2))
        if params["norm_percentile"]:
            norm = np.sqrt((p * p).sum(axis=0))
            p = p * (norm >= np.percentile(norm, params["norm_percentile"]))[None]
        if params["contribution_percentile"]:
            contribution = np.abs((p * grad).sum(axis=0))
            p = p * (contribution >= np.percentile(contribution, params["contribution_percentile"]))[None]
        return p.astype(np.float32)

    def run(self) -> Stages:
        params = self.params
        lr, l2 = params["learning_rate"], params["l2"]
        if params.get("layer"):
            self.weights = self.layer_weights()
        p = self.start()
        low, top = _prior_metadata(self.prior)[:2] if self.prior is not None else (-math.inf, math.inf)
        lo, hi = self.offset, self.gain + self.offset
        m, v = np.zeros_like(p), np.zeros_like(p)
        scores, probabilities = [], []
        self.current = self.decode(p) if self.kind != "generator" else np.zeros(1, np.float32)
        for t in range(params["steps"]):
            matrix = self.transform()
            if self.kind == "generator":
                point = p
            else:
                self.current = self.decode(p)
                point = self.to_model(self.warp(matrix, self.current))
            step: StepReducer = yield self.stage(point)
            scores.append(float(step.rows[SCORE_OUTPUT]))
            probabilities.append(float(step.rows[PROBABILITIES_OUTPUT][self.ctx.target]))
            grad_point = step.rows[INPUT_GRAD_OUTPUT].astype(np.float32)
            if self.kind == "generator":
                grad = grad_point
            else:
                grad = self.decode_adjoint(p, self.warp(matrix, self.from_model(grad_point), adjoint=True))
            ascent = grad - 2.0 * l2 * p
            if params["optimizer"] == "adam":
                b1, b2 = ADAM_BETAS
                m = b1 * m + (1 - b1) * ascent
                v = b2 * v + (1 - b2) * ascent * ascent
                update = (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + ADAM_EPS)
            else:
                update = ascent
            p = (p + lr * update).astype(np.float32)
            if self.kind == "generator":
                p = np.clip(p, low, top).astype(np.float32)
            elif self.kind == "pixel":
                p = self.yosinski(p, grad, t)
                if params["clip"]:
                    p = np.clip(p, lo, hi).astype(np.float32)
        final: StepReducer = yield self.stage(p if self.kind == "generator" else self.to_model(self.decode(p)))
        scores.append(float(final.rows[SCORE_OUTPUT]))
        probabilities.append(float(final.rows[PROBABILITIES_OUTPUT][self.ctx.target]))
        x = final.rows[IMAGE_OUTPUT].astype(np.float32) if self.kind == "generator" else self.to_model(self.decode(p))
        chw = self.from_model(x)
        pixels = np.clip((chw - self.offset) / self.gain, 0.0, 1.0).transpose(1, 2, 0).astype(np.float32)
        arrays = {"image": pixels, "score_curve": np.array(scores, np.float32),
                  "probability_curve": np.array(probabilities, np.float32)}
        if self.kind == "generator":
            arrays["code"] = p.astype(np.float32)
        return Result(x, {"final_score": scores[-1], "final_probability": probabilities[-1]}, arrays)
