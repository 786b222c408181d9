"""Every bad input gets the right status code and a message naming the field, what was expected
and what came; the server stays healthy and keeps answering good requests."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from explaind.methods.lime_core import max_tabular_samples
from explaind_client import build_request
from explaind_client.v1 import explaind_pb2 as pb

GOOD_TENSOR = np.zeros((3, 64, 64), np.float32)


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def request(method: str = "occlusion", params: dict | None = None, model: str = "shapes", **kwargs) -> pb.ExplainRequest:
    if "tensor" not in kwargs and "image" not in kwargs:
        kwargs["tensor"] = GOOD_TENSOR
    params = {"window": [16], "stride": [16]} if params is None else params
    return build_request(model, method=method, params=params, **kwargs)


def raw_tensor(dtype: int, shape: list[int], data: bytes) -> pb.ExplainRequest:
    req = pb.ExplainRequest(model="shapes", occlusion=pb.Occlusion(window=[16], stride=[16]))
    req.tensor.CopyFrom(pb.Tensor(dtype=dtype, shape=shape, data=data))
    return req


def with_nan() -> pb.ExplainRequest:
    x = GOOD_TENSOR.copy()
    x[1, 2, 3] = np.nan
    return request(tensor=x)


def tabular(method: str, params: dict, **kwargs) -> pb.ExplainRequest:
    return request(method, params, model="tabular", tensor=np.zeros(13, np.float32), **kwargs)


def no_method() -> pb.ExplainRequest:
    req = request()
    req.ClearField("occlusion")
    return req


CASES = [
    # (name, request, code, words the message must contain)
    ("unknown model", lambda: request(model="nope"), grpc.StatusCode.NOT_FOUND, ["nope", "shapes"]),
    ("unknown label", lambda: request(target="hexagon"), grpc.StatusCode.NOT_FOUND, ["hexagon", "circle"]),
    ("class index out of range", lambda: request(target=9), grpc.StatusCode.INVALID_ARGUMENT,
     ["target.class_index", "[0, 4]", "9"]),
    ("negative class index", lambda: request(target=-1), grpc.StatusCode.INVALID_ARGUMENT, ["target.class_index", "-1"]),
    ("wrong shape", lambda: request(tensor=np.zeros((3, 32, 32), np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     ["tensor.shape", "[3, 64, 64]", "[3, 32, 32]"]),
    ("batch dimension included", lambda: request(tensor=np.zeros((1, 3, 64, 64), np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT, ["tensor.shape", "without the batch dimension"]),
    ("wrong dtype", lambda: request(tensor=GOOD_TENSOR.astype(np.float64)), grpc.StatusCode.INVALID_ARGUMENT,
     ["tensor.dtype", "FLOAT32", "FLOAT64"]),
    ("wrong byte length", lambda: raw_tensor(pb.FLOAT32, [3, 64, 64], b"\0" * 100), grpc.StatusCode.INVALID_ARGUMENT,
     ["tensor.data", "49152 bytes", "100 bytes"]),
    ("unspecified dtype", lambda: raw_tensor(pb.DATA_TYPE_UNSPECIFIED, [3, 64, 64], b""), grpc.StatusCode.INVALID_ARGUMENT,
     ["tensor.dtype", "DATA_TYPE_UNSPECIFIED"]),
    ("NaN in the input", with_nan, grpc.StatusCode.INVALID_ARGUMENT, ["tensor.data", "finite", "[1, 2, 3]"]),
    ("Inf in the input", lambda: request(tensor=np.full((3, 64, 64), np.inf, np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT, ["tensor.data", "finite", "Inf"]),
    ("undecodable image", lambda: request(image=b"\x89PNG not really"), grpc.StatusCode.INVALID_ARGUMENT,
     ["image", "decodable PNG or JPEG"]),
    ("image over the pixel limit", lambda: request(image=png_of(5000, 4000)), grpc.StatusCode.INVALID_ARGUMENT,
     ["image", "max_image_pixels", "5000x4000"]),
    ("image for a tabular model", lambda: request(model="tabular", image=png_of(8, 8)), grpc.StatusCode.INVALID_ARGUMENT,
     ["image", "tabular"]),
    ("occlusion window larger than the input", lambda: request(params={"window": [65, 8]}),
     grpc.StatusCode.INVALID_ARGUMENT, ["occlusion.window", "[64, 64]", "[65, 8]"]),
    ("occlusion stride 0", lambda: request(params={"stride": [0]}), grpc.StatusCode.INVALID_ARGUMENT,
     ["occlusion.stride", "positive", "got [0]"]),
    ("num_masks 0", lambda: request("rise", {"num_masks": 0}), grpc.StatusCode.INVALID_ARGUMENT,
     ["rise.num_masks", "[1, 60000]", "got 0"]),
    ("num_masks over the maximum", lambda: request("rise", {"num_masks": 60001}), grpc.StatusCode.INVALID_ARGUMENT,
     ["rise.num_masks", "[1, 60000]", "60001"]),
    ("keep probability 0", lambda: request("rise", {"keep_probability": 0.0}), grpc.StatusCode.INVALID_ARGUMENT,
     ["rise.keep_probability", "(0, 1)", "0.0"]),
    ("keep probability above 1", lambda: request("rise", {"keep_probability": 1.5}), grpc.StatusCode.INVALID_ARGUMENT,
     ["rise.keep_probability", "1.5"]),
    ("no method chosen", no_method, grpc.StatusCode.INVALID_ARGUMENT, ["method", "occlusion", "rise", "no method"]),
    ("method the model does not support", lambda: request("rise", {}, model="tabular", tensor=np.zeros(13, np.float32)),
     grpc.StatusCode.FAILED_PRECONDITION, ["rise", "tabular", "occlusion"]),
    ("logit of a probabilities model", lambda: request(model="tabular", tensor=np.zeros(13, np.float32), params={},
                                                       score="logit"),
     grpc.StatusCode.FAILED_PRECONDITION, ["LOGIT", "probabilities"]),
    ("white-box method on a tree model", lambda: request("saliency", {}, model="tabular", tensor=np.zeros(13, np.float32)),
     grpc.StatusCode.FAILED_PRECONDITION, ["saliency", "gradients", "TreeEnsembleClassifier", "occlusion"]),
    ("unknown layer", lambda: request("grad_cam", {"layer": "nope"}), grpc.StatusCode.INVALID_ARGUMENT,
     ["grad_cam.layer", "/features/features.14/Relu_output_0", "'nope'"]),
    ("unknown quadrature", lambda: request("integrated_gradients", {"method": "simpson"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["integrated_gradients.method", "gausslegendre", "simpson"]),
    ("extremal area outside (0, 1)", lambda: request("extremal_perturbation", {"areas": [0.1, 1.5]}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.areas", "(0, 1)", "1.5"]),
    ("extremal area 0", lambda: request("extremal_perturbation", {"areas": [0.0]}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.areas", "(0, 1)"]),
    ("extremal unknown game", lambda: request("extremal_perturbation", {"variant": "keep"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.variant", "preserve", "keep"]),
    ("extremal iterations 0", lambda: request("extremal_perturbation", {"iterations": 0}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.iterations", "[1, 100000]", "0"]),
    ("extremal step over the image", lambda: request("extremal_perturbation", {"step": 65}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.step", "[1, 64]", "65"]),
    ("extremal negative smooth", lambda: request("extremal_perturbation", {"smooth": -0.5}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.smooth", "[0, 1]", "-0.5"]),
    ("extremal sigma too large for the step", lambda: request("extremal_perturbation", {"sigma": 200.0, "step": 1}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.sigma", "MiB", "sigma 200"]),
    ("extremal estimator over the row budget",
     lambda: request("extremal_perturbation", {"gradient": "estimated", "gradient_samples": 4096, "iterations": 1000}),
     grpc.StatusCode.INVALID_ARGUMENT, ["extremal_perturbation.iterations", "model evaluations", "8193000"]),
    ("extremal on a tabular model", lambda: request("extremal_perturbation", {}, model="tabular",
                                                    tensor=np.zeros(13, np.float32)),
     grpc.StatusCode.FAILED_PRECONDITION, ["extremal_perturbation", "tabular"]),
    # Method parameters, method by method (extremal_perturbation above).
    ("occlusion window for a tabular model", lambda: tabular("occlusion", {"window": [2]}),
     grpc.StatusCode.INVALID_ARGUMENT, ["occlusion.window", "tabular", "[2]"]),
    ("occlusion baseline NaN", lambda: request(params={"baseline": float("nan")}), grpc.StatusCode.INVALID_ARGUMENT,
     ["occlusion.baseline", "finite", "nan"]),
    ("rise grid over the image", lambda: request("rise", {"grid_size": 65}), grpc.StatusCode.INVALID_ARGUMENT,
     ["rise.grid_size", "[1, 64]", "65"]),
    ("rise baseline Inf", lambda: request("rise", {"baseline": float("inf")}), grpc.StatusCode.INVALID_ARGUMENT,
     ["rise.baseline", "finite", "inf"]),
    ("lime one sample", lambda: request("lime", {"num_samples": 1}), grpc.StatusCode.INVALID_ARGUMENT,
     ["lime.num_samples", "[2, 2000000]", "got 1"]),
    ("lime unknown segmentation", lambda: request("lime", {"segmentation": "watershed"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["lime.segmentation", "quickshift, slic, felzenszwalb", "watershed"]),
    ("lime kernel width 0", lambda: request("lime", {"kernel_width": 0.0}), grpc.StatusCode.INVALID_ARGUMENT,
     ["lime.kernel_width", "(0, 1e+06)", "0.0"]),
    ("lime hide value Inf", lambda: request("lime", {"hide_value": float("-inf")}), grpc.StatusCode.INVALID_ARGUMENT,
     ["lime.hide_value", "finite", "-inf"]),
    ("lime tabular samples over the memory budget", lambda: tabular("lime", {"num_samples": 2_000_000}),
     grpc.StatusCode.INVALID_ARGUMENT, ["lime.num_samples", f"at most {max_tabular_samples(13, 1 << 30)} for the "
                                        "model's 13 features", "max_request_memory_bytes of 1073741824",
                                        "got 2000000"]),
    ("lime segmentation on a tabular model", lambda: tabular("lime", {"segmentation": "slic"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["lime.segmentation", "tabular", "slic"]),
    ("lime hide value on a tabular model", lambda: tabular("lime", {"hide_value": 1.0}),
     grpc.StatusCode.INVALID_ARGUMENT, ["lime.hide_value", "tabular", "1.0"]),
    ("kernel_shap fewer coalitions than features", lambda: tabular("kernel_shap", {"nsamples": 5}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.nsamples", "[13, 10000000]", "got 5"]),
    ("kernel_shap fewer coalitions than superpixels", lambda: request("kernel_shap", {"nsamples": 1}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.nsamples", "superpixels", "got 1"]),
    ("kernel_shap unknown l1_reg", lambda: tabular("kernel_shap", {"l1_reg": "lasso"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.l1_reg", "num_features(k), aic or bic", "'lasso'"]),
    ("kernel_shap l1_reg keeping no feature", lambda: request("kernel_shap", {"l1_reg": "num_features(0)"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.l1_reg", ">= 1", "'num_features(0)'"]),
    ("kernel_shap l1_reg over the features", lambda: tabular("kernel_shap", {"l1_reg": "num_features(14)"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.l1_reg", "[1, 13]", "'num_features(14)'"]),
    ("kernel_shap image coalitions over the memory budget with l1_reg",  # slic: ~120 superpixels of the blank image
     lambda: request("kernel_shap", {"nsamples": 1_000_000, "l1_reg": "aic", "segmentation": "slic"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.nsamples", "at most", "superpixels slic made of this image",
                                        "l1_reg aic", "max_request_memory_bytes of 1073741824", "got 1000000"]),
    ("kernel_shap unknown link", lambda: tabular("kernel_shap", {"link": "probit"}), grpc.StatusCode.INVALID_ARGUMENT,
     ["kernel_shap.link", "identity, logit", "probit"]),
    ("kernel_shap logit link of a logit score", lambda: request("kernel_shap", {"link": "logit"}, score="logit"),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.link", "LOGIT", "got logit"]),
    ("kernel_shap logit link of a probability 0", lambda: tabular("kernel_shap", {"link": "logit", "nsamples": 26},
                                                                  target=0),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.link", "(0, 1)", "probability of 0"]),
    ("kernel_shap k-means over the background rows", lambda: tabular("kernel_shap", {"background_kmeans": 101}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.background_kmeans", "[1, 100]", "101"]),
    ("kernel_shap k-means on an image model", lambda: request("kernel_shap", {"background_kmeans": 5}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.background_kmeans", "image model", "5"]),
    ("kernel_shap segmentation on a tabular model", lambda: tabular("kernel_shap", {"segmentation": "slic"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.segmentation", "tabular", "slic"]),
    ("kernel_shap unknown fill", lambda: request("kernel_shap", {"fill": "noise"}), grpc.StatusCode.INVALID_ARGUMENT,
     ["kernel_shap.fill", "blur, mean, value", "noise"]),
    ("kernel_shap fill value without fill=value", lambda: request("kernel_shap", {"fill_value": 3.0}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.fill_value", "fill is value", "3.0 with fill blur"]),
    ("kernel_shap blur over the image", lambda: request("kernel_shap", {"blur_sigma": 65.0}),
     grpc.StatusCode.INVALID_ARGUMENT, ["kernel_shap.blur_sigma", "(0, 64]", "65.0"]),
    ("saliency unknown postprocess", lambda: request("saliency", {"postprocess": "cubed"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["saliency.postprocess", "raw, absolute, squared", "cubed"]),
    ("saliency unknown channel reduction", lambda: request("saliency", {"channel_reduction": "median"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["saliency.channel_reduction", "none, max, sum, mean", "median"]),
    ("smooth_grad no samples", lambda: request("smooth_grad", {"num_samples": 0}), grpc.StatusCode.INVALID_ARGUMENT,
     ["smooth_grad.num_samples", "[1, 2000000]", "got 0"]),
    ("smooth_grad negative noise", lambda: request("smooth_grad", {"noise_level": -0.5}),
     grpc.StatusCode.INVALID_ARGUMENT, ["smooth_grad.noise_level", "[0, 10]", "-0.5"]),
    ("smooth_grad stdev 0", lambda: request("smooth_grad", {"stdev": 0.0}), grpc.StatusCode.INVALID_ARGUMENT,
     ["smooth_grad.stdev", "positive", "0.0"]),
    ("smooth_grad stdev and noise_level", lambda: request("smooth_grad", {"stdev": 0.2, "noise_level": 0.1}),
     grpc.StatusCode.INVALID_ARGUMENT, ["smooth_grad.stdev", "not both"]),
    ("integrated_gradients no steps", lambda: request("integrated_gradients", {"n_steps": 0}),
     grpc.StatusCode.INVALID_ARGUMENT, ["integrated_gradients.n_steps", "got 0"]),
    ("integrated_gradients Gauss-Legendre over its node limit",
     lambda: request("integrated_gradients", {"n_steps": 1025}),
     grpc.StatusCode.INVALID_ARGUMENT, ["integrated_gradients.n_steps", "at most 1024 for gausslegendre", "1025"]),
    ("integrated_gradients trapezoid of one step",
     lambda: request("integrated_gradients", {"n_steps": 1, "method": "riemann_trapezoid"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["integrated_gradients.n_steps", "at least 2 for riemann_trapezoid", "got 1"]),
    ("integrated_gradients baseline Inf", lambda: request("integrated_gradients", {"baseline": float("inf")}),
     grpc.StatusCode.INVALID_ARGUMENT, ["integrated_gradients.baseline", "finite", "inf"]),
    ("deconvnet unknown channel reduction", lambda: request("deconvnet", {"channel_reduction": "min"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["deconvnet.channel_reduction", "none, max, sum, mean", "min"]),
    ("grad_cam unknown upsample", lambda: request("grad_cam", {"upsample": "bicubic"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["grad_cam.upsample", "bilinear, nearest, none", "bicubic"]),
    ("grad_cam_plus_plus unknown layer", lambda: request("grad_cam_plus_plus", {"layer": "nope"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["grad_cam_plus_plus.layer", "'nope'"]),
    ("guided_grad_cam without upsampling", lambda: request("guided_grad_cam", {"upsample": "none"}),
     grpc.StatusCode.INVALID_ARGUMENT, ["guided_grad_cam.upsample", "nearest, bilinear", "none"]),
    ("no input", lambda: pb.ExplainRequest(model="shapes", rise=pb.Rise()), grpc.StatusCode.INVALID_ARGUMENT,
     ["input", "tensor or an image"]),
    ("failed model", lambda: request(model="broken"), grpc.StatusCode.UNAVAILABLE, ["broken", "failed to load"]),
    ("unknown score enum", lambda: pb.ExplainRequest(model="shapes", tensor=request().tensor, score=7, rise=pb.Rise()),
     grpc.StatusCode.INVALID_ARGUMENT, ["score", "7"]),
]


@pytest.mark.parametrize("name, make, code, words", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rpc", ["Explain", "ExplainStream"])
def test_bad_input_is_refused_clearly_and_the_server_stays_healthy(server, client, name, make, code, words, rpc):
    call = getattr(client.stub, rpc)
    with pytest.raises(grpc.RpcError) as err:
        reply = call(make(), timeout=30)
        if rpc == "ExplainStream":
            list(reply)
    assert err.value.code() == code, err.value.details()
    for word in words:
        assert word in err.value.details(), (word, err.value.details())
    assert server.health() == "SERVING"


def test_good_requests_still_work_after_bad_ones(client):
    result = client.explain("shapes", method="occlusion", tensor=GOOD_TENSOR, params={"window": [32], "stride": [32]})
    assert result.attribution.shape == (64, 64)


def test_a_request_over_the_message_size_limit_is_refused(server, client):
    huge = np.random.default_rng(0).integers(0, 255, size=5 << 20, dtype=np.uint8).tobytes()  # 5 MiB > 4 MiB
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Explain(pb.ExplainRequest(model="shapes", image=huge, rise=pb.Rise()), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()
    assert server.health() == "SERVING"
