"""xrai, guided_ig, blur_ig, meaningful_perturbation, aggregated and occlusion's random fill through
the real server and client on the shapes demo: arrays and figures, streamed progress, seeds, and
INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import grpc
import numpy as np
import pytest


def test_region_and_path_methods_over_grpc(client, example_image):
    png, _ = example_image
    xrai = client.explain("shapes", method="xrai", image=png, seed=1, params={"steps": 8})
    assert xrai.attribution.shape == (64, 64) and xrai.arrays["segments"].shape == (64, 64)
    assert xrai.arrays["ig_attribution"].shape == (3, 64, 64) and xrai.figures["regions"] >= 1
    assert int(xrai.stats["model_evaluations"]) == 1 + 2 * 8
    # the top-ranked region holds the highest gain
    assert xrai.attribution[xrai.arrays["segments"] == 1].min() == pytest.approx(xrai.attribution.max())

    updates = list(client.explain_stream("shapes", method="guided_ig", image=png, seed=1, params={"steps": 20}))
    progress = [u for u in updates if type(u).__name__ == "Progress"]
    assert progress and progress[-1].rows_done == progress[-1].rows_total == 21
    final = updates[-1]
    assert final.attribution.shape == (3, 64, 64) and "completeness_gap" in final.figures

    blur = client.explain("shapes", method="blur_ig", image=png, seed=1, params={"steps": 10, "max_sigma": 6.0,
                                                                                 "channel_reduction": "sum"})
    assert blur.attribution.shape == (64, 64) and np.abs(blur.attribution).max() > 0

    given = {"iterations": 15, "perturbation": "noise"}
    mp = client.explain("shapes", method="meaningful_perturbation", image=png, seed=4, params=given)
    again = client.explain("shapes", method="meaningful_perturbation", image=png, seed=4, params=given)
    np.testing.assert_array_equal(mp.arrays["mask"], again.arrays["mask"])  # seeded: noise and jitter
    assert mp.arrays["objective"].shape == (15,) and 0 <= mp.arrays["mask"].min() <= mp.arrays["mask"].max() <= 1
    np.testing.assert_allclose(mp.attribution, 1 - mp.arrays["mask"], atol=1e-6)
    assert mp.stats["parameters"]["mask_size"] == 8 and mp.stats["parameters"]["jitter"] == 1  # scaled to 64 px

    agg = client.explain("shapes", method="aggregated", image=png, seed=1,
                         params={"methods": "saliency,input_x_gradient", "aggregation": "median"})
    assert set(agg.arrays) == {"saliency", "input_x_gradient"}
    np.testing.assert_allclose(agg.attribution, np.median(np.stack([agg.arrays["saliency"],
                                                                      agg.arrays["input_x_gradient"]]), axis=0),
                               atol=1e-6)

    # constituents that read a layer's activation (cam, from a prediction stage of their own) or a layer's
    # gradient (grad_cam): their [H, W] maps beside saliency's channel-summed one, max-normalised, averaged
    cams = client.explain("shapes", method="aggregated", image=png, seed=1,
                          params={"methods": "cam,grad_cam,saliency", "weights": [1.0, 1.0, 2.0]})
    assert int(cams.stats["model_evaluations"]) == 1 + 1 + 1 + 1
    for name in ("cam", "grad_cam", "saliency"):
        assert np.abs(cams.arrays[name]).max() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(cams.attribution, (cams.arrays["cam"] + cams.arrays["grad_cam"]
                                                  + 2 * cams.arrays["saliency"]) / 4, atol=1e-6)
    alone = client.explain("shapes", method="cam", image=png, seed=1)
    np.testing.assert_allclose(cams.arrays["cam"], alone.attribution / np.abs(alone.attribution).max(), atol=1e-6)

    occ = client.explain("shapes", method="occlusion", image=png, seed=2, params={"fill": "uniform"})
    other = client.explain("shapes", method="occlusion", image=png, seed=3, params={"fill": "uniform"})
    assert not np.array_equal(occ.attribution, other.attribution)  # a random patch per window, seeded

    for method, params, field in (("guided_ig", {"fraction": 0.0}, "guided_ig.fraction"),
                                  ("xrai", {"algorithm": "slow"}, "xrai.algorithm"),
                                  ("meaningful_perturbation", {"perturbation": "fade"}, "meaningful_perturbation.perturbation"),
                                  ("aggregated", {"methods": "tree_shap"}, "aggregated.methods"),
                                  ("occlusion", {"fill": "random"}, "occlusion.fill")):
        with pytest.raises(grpc.RpcError) as error:
            client.explain("shapes", method=method, image=png, params=params)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.value.details()
