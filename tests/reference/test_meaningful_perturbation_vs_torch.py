"""Meaningful perturbation against a torch implementation of the same objective and update, step by
step, on the zoo's torch models (see _methods.py): the low-resolution mask upsampled by
torch.nn.functional.interpolate (bilinear, align_corners=False), shifted by explaind's jitter (returned
in `jitter`), Phi = m x + (1 - m) p, E = l1 |1 - M|_1 + tv sum |grad M|^beta + softmax_c(model(Phi)),
torch.optim.Adam and a clamp to [0, 1] after each step. The objective curve and the final mask agree
to 1e-4 (relative), for blur, constant and noise perturbations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _methods import IMAGE, check

from explaind.methods.meaningful_perturbation import MeaningfulPerturbation


def torch_run(model, x, p, target, size, shifts, l1, tv, beta, lr):
    """The objective per iteration and the final upsampled mask, by torch autograd and Adam."""
    xt, pt = torch.from_numpy(x[None].astype(np.float32)), torch.from_numpy(p[None].astype(np.float32))
    height, width = x.shape[1:]
    mask = torch.ones(1, 1, size, size, requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=lr)
    curve = []
    for dy, dx in shifts:
        up = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
        rows = torch.clamp(torch.arange(height) - int(dy), 0, height - 1)
        cols = torch.clamp(torch.arange(width) - int(dx), 0, width - 1)
        up = up[:, :, rows][:, :, :, cols]
        shown = xt * up + pt * (1 - up)
        m = mask[0, 0]
        energy = (l1 * (1 - m).abs().sum()
                  + tv * ((m[1:] - m[:-1]).abs() ** beta).sum() + tv * ((m[:, 1:] - m[:, :-1]).abs() ** beta).sum()
                  + torch.softmax(model(shown), dim=1)[0, target])
        optimizer.zero_grad()
        energy.backward()
        optimizer.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
        curve.append(float(energy.detach()))
    final = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return np.array(curve), final.detach().numpy()


@pytest.mark.parametrize("name", IMAGE)
@pytest.mark.parametrize("perturbation", ["blur", "constant", "noise"])
def test_meaningful_perturbation_step_by_step(case, xp, summary, name, perturbation):
    ex, x, _, target = case(name)
    given = {"iterations": 12, "perturbation": perturbation, "jitter": 2, "mask_size": 8,
             "l1_coeff": 1e-6, "tv_coeff": 1e-4}
    method = MeaningfulPerturbation()
    got, params = xp.explain(method, given, ex.in_process, x, target, score="probability")
    assert got.model_evaluations == 1 + 12 + 1
    shifts = got.arrays["jitter"].astype(np.int64)
    assert np.abs(shifts).max() <= 2 and len(np.unique(shifts)) > 1
    # The perturbation explaind used (the noise is the request's draw: recomputed from the same seed).
    ctx = type("Ctx", (), {"x": x, "model": ex.in_process[1], "rng": np.random.default_rng(1)})()
    p = method.perturbation(params, ctx)
    curve, mask = torch_run(ex.torch_model, x, p, target, 8, shifts, 1e-6, 1e-4, params["tv_beta"], 0.1)
    check(summary, f"MeaningfulPerturbation({perturbation}) objective", name, got.arrays["objective"], curve, 1e-4)
    check(summary, f"MeaningfulPerturbation({perturbation}) mask", name, got.arrays["mask"], mask, 1e-4)
    np.testing.assert_allclose(got.attribution, 1 - got.arrays["mask"], atol=1e-7)
    assert mask.min() < 0.95  # the mask moved: the comparison is not of two all-ones masks
