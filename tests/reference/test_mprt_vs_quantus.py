"""MPRT against Quantus (0.6) on the same randomised weights, and Adebayo et al.'s finding on the
shapes demo model.

1. The zoo's ResNet (convolutions, batch norms, shortcuts, a linear head) exported to ONNX; explaind's
   MPRT (cascading over every layer, saliency) in process. Its randomised ONNX copies are rebuilt from
   the metric's own weights stream (evaluation/mprt.py randomised_graphs) and loaded back into the
   torch twin; Quantus's MPRT then runs end to end on those torch copies (its layer generator fed
   them in the same order) with a torch saliency as explain_func, on explaind's original map. Its
   per-layer Spearman scores equal explaind's curve within 1e-6; Quantus's ssim on explaind's own
   randomised maps (2-D, after Quantus's normalise_by_max and abs) equals explaind's SSIM curve
   within 1e-6; torch's saliency on each copy matches explaind's map on the ONNX copy (the weights
   went across).
2. Adebayo's finding: over the cascade, plain gradients (saliency) lose their rank correlation with
   the original map much faster than guided backpropagation does.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import quantus
import torch
from onnx import numpy_helper
from quantus.functions.normalise_func import normalise_by_max
from quantus.functions.similarity_func import correlation_spearman, ssim
from quantus.helpers.model.pytorch_model import PyTorchModel

from explaind.evaluation.mprt import MPRT, randomised_graphs
from explaind.evaluation.run import metric_rng
from explaind.methods.guided_backprop import GuidedBackprop
from explaind.methods.saliency import Saliency
from explaind.demo.shapes_data import make_dataset

sys.path.insert(0, str(Path(__file__).parents[1]))
from inprocess import run_method, run_metric, served_onnx  # noqa: E402

SEED = 3
SHAPES = Path(__file__).parents[2] / "service" / "explaind" / "demo" / "repository" / "shapes" / "model.onnx"


def run(xp, coro):
    return xp.loop.run_until_complete(coro)


def mprt(xp, served, view, x, target, attribution, method, method_params, given=None):
    outcome, params = run(xp, run_metric(xp.engine, served, MPRT(), given or {}, x, target, attribution, score="logit",
                                         seed=SEED, view=view, method=method, method_params=method_params))
    return outcome, params


def explain_on(xp, served, view, graph, method, params, x, target):
    """explaind's map of x on another graph of the model (served for the call, as MPRT does)."""

    async def go():
        with xp.engine.temporary(served, graph) as copy:
            out, _ = await run_method(xp.engine, copy, method, params, x, target, score="logit",
                                      view=dataclasses.replace(view, graph=graph))
            return out.attribution

    return run(xp, go())


def torch_saliency(model, inputs, targets, **_):
    """|d logit / d x| with the maximum over channels (explaind's saliency defaults), [B, H, W]."""
    x = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
    logits = model(x)
    logits[torch.arange(len(x)), torch.as_tensor(np.asarray(targets)).long()].sum().backward()
    return x.grad.abs().amax(dim=1).detach().numpy()


def load_into(torch_model, graph: onnx.ModelProto):
    """A copy of the torch twin holding the ONNX graph's initializers (same names as its state_dict)."""
    twin = copy.deepcopy(torch_model)
    state = twin.state_dict()
    values = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    moved = {name: torch.from_numpy(values[name].copy()) for name in state if name in values}
    state.update(moved)
    twin.load_state_dict(state)
    return twin.eval(), moved


def test_mprt_spearman_and_ssim_equal_quantus_on_the_same_randomised_weights(case, xp, monkeypatch):
    ex, x, _, target = case("resnet")
    served, view = ex.in_process
    original, _ = xp.explain(Saliency(), {}, ex.in_process, x, target)
    outcome, params = mprt(xp, served, view, x, target, original.attribution, Saliency(), {})
    assert params == {"order": "cascading", "layers": params["layers"], "init": "uniform", "abs": True}
    steps = params["layers"]
    assert steps >= 10  # 6 convolutions, 6 batch norms, the head (shortcut projection included)

    # The metric's randomised copies again, from its weights stream (the first of its two).
    weights_rng = metric_rng(SEED, 0, "mprt").spawn(2)[0]
    graphs = [g for _, g in randomised_graphs(ex.onnx_model, params, weights_rng)]
    twins = []
    for graph in graphs:
        twin, moved = load_into(ex.torch_model, graph)
        drawn = {t.name for t in graph.graph.initializer} & set(dict(ex.torch_model.state_dict()))
        assert set(moved) == drawn and drawn  # every parameter went across
        twins.append(twin)

    # Quantus end to end on those torch copies, in explaind's order, on explaind's original map.
    def generator(self, order="top_down", seed=42):
        for k, twin in enumerate(twins):
            yield f"step{k}", twin

    monkeypatch.setattr(PyTorchModel, "get_random_layer_generator", generator)
    monkeypatch.setattr(PyTorchModel, "random_layer_generator_length", property(lambda self: len(twins)))
    metric = quantus.MPRT(layer_order="top_down", abs=True, normalise=True, disable_warnings=True)
    scores = metric(model=ex.torch_model, x_batch=x[None], y_batch=np.array([target]),
                    a_batch=original.attribution[None], explain_func=torch_saliency, device="cpu", softmax=False)
    quantus_spearman = np.array([scores[f"step{k}"][0] for k in range(steps)])
    ours = outcome.value.curves["spearman"]
    assert np.abs(quantus_spearman - ours).max() < 1e-6, (quantus_spearman, ours)
    assert outcome.value.value == pytest.approx(quantus_spearman[-1], abs=1e-6)

    # Quantus's similarity functions on explaind's own maps of the copies; torch's maps agree with them.
    a = np.abs(normalise_by_max(original.attribution[None]))[0]
    ssim_gap = rho_gap = 0.0
    for k, (graph, twin) in enumerate(zip(graphs, twins)):
        ours_map = explain_on(xp, served, view, graph, Saliency(), {}, x, target)
        theirs = torch_saliency(twin, x[None], [target])[0]
        np.testing.assert_allclose(ours_map, theirs, rtol=1e-3, atol=1e-5 * np.abs(theirs).max())
        b = np.abs(normalise_by_max(ours_map[None]))[0]
        assert outcome.value.curves["ssim"][k] == pytest.approx(ssim(a, b), abs=1e-6)
        rho = correlation_spearman(a.reshape(1, -1), b.reshape(1, -1), batched=True)[0]
        assert outcome.value.curves["spearman"][k] == pytest.approx(rho, abs=1e-6)
        ssim_gap = max(ssim_gap, abs(outcome.value.curves["ssim"][k] - ssim(a, b)))
        rho_gap = max(rho_gap, abs(outcome.value.curves["spearman"][k] - rho))
    print(f"\nresnet MPRT vs Quantus ({steps} steps): max |spearman difference| end to end "
          f"{np.abs(quantus_spearman - ours).max():.2e}, on explaind's maps {rho_gap:.2e}; max |ssim difference| "
          f"{ssim_gap:.2e}; spearman per step {np.round(ours, 3).tolist()}")


def test_adebayo_guided_backprop_survives_randomisation_that_saliency_does_not(xp):
    served, view = served_onnx("shapes", onnx.load(SHAPES), (3, 64, 64))
    images, labels, _ = make_dataset(6, 11)
    xs = ((images.astype(np.float32) / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2)
    curves = {}
    for name, method, params in [("saliency", Saliency(), {}),
                                 ("guided_backprop", GuidedBackprop(), {"channel_reduction": "max"})]:
        per_image = []
        for x, target in zip(xs, labels):
            original, _ = run(xp, run_method(xp.engine, served, method, params, x, int(target), score="logit", view=view))
            outcome, _ = mprt(xp, served, view, x, int(target), original.attribution, method, params)
            per_image.append([outcome.value.curves[c] for c in ("spearman", "ssim", "hog")])
        curves[name] = np.mean(per_image, axis=0)  # [3 similarities, steps]
    sal, gb = curves["saliency"], curves["guided_backprop"]
    print("\nshapes MPRT (cascading, mean of 6 images), top layer first:")
    for name, c in curves.items():
        print(f"  {name:16s} spearman {np.round(c[0], 2).tolist()}\n  {'':16s} ssim     {np.round(c[1], 2).tolist()}"
              f"\n  {'':16s} hog      {np.round(c[2], 2).tolist()}")
    # Guided backprop keeps a higher rank correlation at every step but the last (the first convolution
    # re-drawn too, when both are near 0.2), and on average over the cascade by a wide margin.
    assert (gb[0, :-1] > sal[0, :-1]).all()
    assert gb[0].mean() - sal[0].mean() > 0.1
    # At full randomisation its structure (HOG) still resembles the original map; saliency's does not.
    assert gb[2, -1] - sal[2, -1] > 0.1
    assert sal[0, -1] < 0.3  # saliency changes a lot


def test_a_constant_map_is_nan_in_quantus_and_defined_in_explaind():
    """The one documented difference on a constant map (a randomised Grad-CAM's all-zero map): Quantus's
    correlation_spearman gives NaN; explaind's gives 0 (1 for two equal maps); elsewhere they agree."""
    from explaind.evaluation.mprt import spearman

    rng = np.random.default_rng(0)
    varied, other, zeros = rng.normal(size=(8, 8)), rng.normal(size=(8, 8)), np.zeros((8, 8))
    with np.errstate(all="ignore"), pytest.warns(Warning):
        assert np.isnan(correlation_spearman(varied.ravel(), zeros.ravel()))
    assert spearman(varied, zeros) == 0.0 and spearman(zeros, zeros.copy()) == 1.0
    assert spearman(varied, other) == pytest.approx(float(correlation_spearman(varied.ravel(), other.ravel())), abs=1e-12)
