"""Integrated Gradients against Captum's IntegratedGradients on the same torch models (see _methods.py
for the setup).

- Captum IntegratedGradients (baseline 0, same n_steps, same method: gausslegendre,
  riemann_trapezoid, riemann_left/right/middle) vs integrated_gradients (per channel); explaind's
  completeness gap (extras["completeness_gap"]) vs sum(attr) - (f(x) - f(0)) computed with torch,
  and vs Captum's convergence delta (the same quantity for Captum's attribution). resnet, vgg, mlp
  riemann_trapezoid uses Captum's own weights (1/n, ends halved, summing to (n - 1)/n).
"""

from __future__ import annotations

import numpy as np
import pytest
from captum.attr import IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters

from _methods import ALL, TOL, check, logits, rel_err
from explaind.methods.integrated_gradients import IntegratedGradients as XIntegratedGradients
from explaind.methods.integrated_gradients import quadrature

# Captum's notices ("Input Tensor 0 did not already require gradients", "Setting backward hooks on ReLU").
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

IG_STEPS = 16
IG_METHODS = ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]
# Captum's riemann_trapezoid takes step sizes 1/n with both ends halved (they sum to (n - 1)/n);
# explaind uses the same weights, so every method compares directly.


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("method", IG_METHODS)
def test_integrated_gradients_and_completeness_gap(case, xp, summary, name, method):
    ex, x, xt, target = case(name)
    ig = IntegratedGradients(ex.torch_model)
    ref, delta = ig.attribute(xt, baselines=0.0, target=target, n_steps=IG_STEPS, method=method,
                              return_convergence_delta=True)
    ref, delta = ref[0].detach().numpy().astype(np.float64), float(delta[0])
    # Same nodes and weights as Captum's.
    captum_steps, captum_alphas = approximation_parameters(method)
    alphas, steps = quadrature(method, IG_STEPS)
    np.testing.assert_allclose(alphas, captum_alphas(IG_STEPS), atol=1e-7)
    np.testing.assert_allclose(steps, np.asarray(captum_steps(IG_STEPS)), rtol=1e-7)
    got, params = xp.explain(XIntegratedGradients(), {"n_steps": IG_STEPS, "method": method, "baseline": 0.0},
                             ex.in_process, x, target)
    assert params.get("channel_reduction", "none") == "none" and got.model_evaluations == 1 + IG_STEPS + 2  # prediction, nodes, f(x), f(0)
    check(summary, f"IntegratedGradients({method})", name, got.attribution, ref)

    # Completeness gap: sum(attr) - (f(x) - f(0)), f the torch model's target logit.
    f_x, f_0 = logits(ex, np.stack([x, np.zeros_like(x)]))[:, target]
    extras = got.figures
    scale = max(abs(f_x - f_0), abs(f_x), abs(f_0))
    assert extras["f_input"] == pytest.approx(f_x, rel=1e-4, abs=1e-5 * scale)
    assert extras["f_baseline"] == pytest.approx(f_0, rel=1e-4, abs=1e-5 * scale)
    torch_gap = float(np.asarray(got.attribution, np.float64).sum()) - (f_x - f_0)
    gap_err = abs(extras["completeness_gap"] - torch_gap) / scale
    summary.record("IG completeness gap (vs torch f)", name, gap_err)
    assert gap_err <= 1e-4, (extras, torch_gap)
    # ... and Captum's convergence delta is the same quantity for Captum's attribution: they agree to
    # the attributions' agreement (a sum of 3072 of them), relative to the total attribution f(x) - f(0).
    delta_err = abs(extras["completeness_gap"] - delta) / scale
    summary.record("IG completeness gap (vs Captum delta)", name, delta_err)
    assert delta_err <= TOL, (extras["completeness_gap"], delta)


def test_riemann_trapezoid_weights_are_captums(case, xp):
    ex, x, xt, target = case("mlp")
    ref = IntegratedGradients(ex.torch_model).attribute(xt, baselines=0.0, target=target, n_steps=IG_STEPS,
                                                        method="riemann_trapezoid")[0].detach().numpy()
    got, _ = xp.explain(XIntegratedGradients(), {"n_steps": IG_STEPS, "method": "riemann_trapezoid"}, ex.in_process,
                        x, target)
    assert rel_err(got.attribution, ref) <= TOL, rel_err(got.attribution, ref)
