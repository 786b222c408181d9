"""explaind's LRP (rules of onnxgraph/autodiff, variant "lrp") against Zennit and Captum's LRP on the
torch twins of the reference zoo.

Zennit is given the canonisation explaind does on the ONNX graph: every batch norm right after a
convolution merged into it (NamedMergeBatchNorm with the Conv -> BatchNormalization pairs read off the
exported graph; Zennit's SequentialMergeBatchNorm would also merge DenseNet's pre-activation batch
norms into the stem, which is not a merge), and every residual addition a `zennit.layer.Sum` module
(an AttributeCanonizer rewriting the blocks' forward), so that its Norm rule splits the relevance
there as explaind's Add rule does. The relevance seed is the one-hot target (both libraries are
linear in it). Relative error max|a - b| / max|b| <= 1e-3 on the input relevance for every composite.

The SE twin multiplies an activation by its gate (Mul of two activations): LRP refuses it with
FAILED_PRECONDITION naming the node, while the plain gradient still works.

Captum's LRP (EpsilonRule, Alpha1_Beta0_Rule; its relevance seed is the target logit) supports the
VGG twin's and the MLP's layers: epsilon everywhere; alpha1-beta0 above the first layer (Captum's
rule clamps the weights only, which is z+ for the non-negative inputs those layers see).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _methods import import_zennit

import zoo
from explaind.errors import FailedPrecondition
from explaind.onnxgraph.autodiff import differentiate
from explaind.onnxgraph.autodiff.lrp import COMPOSITES, Composite, operators_without_rule, relevance_graph

TOL = 1e-3
SEED = "explaind::seed"
GRAD = "explaind::grad::"
MODELS = ["resnet", "vgg", "mobilenetv2", "densenet", "mlp"]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
LOW = ((0 - MEAN) / STD).reshape(1, 3, 1, 1).astype(np.float32)
HIGH = ((1 - MEAN) / STD).reshape(1, 3, 1, 1).astype(np.float32)


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-12))


def _image(ex) -> bool:
    return len(ex.torch_model.input_shape) == 3


def _bounds(ex) -> tuple:
    return (LOW, HIGH) if _image(ex) else (None, None)


def _inputs(ex, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, *ex.torch_model.input_shape)).astype(np.float32)
    if _image(ex):  # pixels in [0, 1] normalised like the bounds
        x = ((rng.random((n, *ex.torch_model.input_shape)) - MEAN.reshape(3, 1, 1)) / STD.reshape(3, 1, 1))
        x = x.astype(np.float32)
    seed = np.eye(ex.entry.num_classes, dtype=np.float32)[(np.arange(n) * 3 + 1) % ex.entry.num_classes]
    return x, seed


def explaind_lrp(ex, composite: Composite, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    derived = relevance_graph(ex.onnx_model, "logits", "input", composite, seed_name=SEED, grad_prefix=GRAD)
    onnx.checker.check_model(derived)
    session = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([GRAD + "input"], {"input": x, SEED: seed})[0]


# Zennit ---------------------------------------------------------------------------------------


def _bn_pairs(ex) -> list[tuple[list[str], str]]:
    """(Conv module, BatchNorm module) pairs where the BN reads the Conv's output alone."""
    nodes = list(ex.onnx_model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    pairs = []
    for n in nodes:
        if n.op_type == "BatchNormalization":
            p = producer.get(n.input[0])
            if p is not None and p.op_type == "Conv" and readers[n.input[0]] == 1:
                pairs.append(([zoo.module_of_node(p)], zoo.module_of_node(n)))
    return pairs


def _residual_canonizer(zennit):
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def basic_forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.canonizer_sum(torch.stack([out, self.shortcut(x)], dim=-1)))

    def inverted_forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return self.canonizer_sum(torch.stack([x, out], dim=-1)) if self.use_residual else out

    def attributes(name, module):
        if isinstance(module, zoo.BasicBlock):
            return {"forward": basic_forward.__get__(module), "canonizer_sum": Sum()}
        if isinstance(module, zoo.InvertedResidual) and module.use_residual:
            return {"forward": inverted_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


def zennit_composite(zennit, name: str, ex, canonizers, layer_rules: dict | None = None):
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.types import Linear

    low, high = (torch.from_numpy(b) for b in _bounds(ex)) if _image(ex) else (None, None)
    if name == "deep_taylor":
        first = zr.ZBox(low=low, high=high) if low is not None else zr.WSquare()
        composite = zc.SpecialFirstLayerMapComposite(
            layer_map=zc.layer_map_base() + [(Linear, zr.ZPlus())], first_map=[(Linear, first)], canonizers=canonizers)
    elif name == "epsilon_gamma_box":
        composite = zc.EpsilonGammaBox(low=low if low is not None else -3.0, high=high if high is not None else 3.0,
                                       canonizers=canonizers)
    else:
        composite = zc.COMPOSITES[name](canonizers=canonizers)
    if layer_rules:
        named = zc.NameMapComposite(name_map=[([module], rule) for module, rule in layer_rules.items()])
        composite = zc.MixedComposite([named, composite])
    return composite


def zennit_lrp(ex, name: str, x: np.ndarray, seed: np.ndarray, layer_rules: dict | None = None) -> np.ndarray:
    zennit = import_zennit()
    from zennit.canonizers import NamedMergeBatchNorm

    canonizers = [NamedMergeBatchNorm(_bn_pairs(ex)), _residual_canonizer(zennit)]
    composite = zennit_composite(zennit, name, ex, canonizers, layer_rules)
    model = ex.torch_model
    with composite.context(model) as modified:
        inp = torch.from_numpy(x.copy()).requires_grad_(True)
        out = modified(inp)
        (relevance,) = torch.autograd.grad(out, inp, grad_outputs=torch.from_numpy(seed))
    return relevance.detach().numpy()


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("name", MODELS)
def test_composite_matches_zennit(exported, name, composite):
    ex = exported(name)
    x, seed = _inputs(ex)
    low, high = _bounds(ex)
    ours = explaind_lrp(ex, Composite(composite, low=low, high=high), x, seed)
    theirs = zennit_lrp(ex, composite, x, seed)
    assert np.abs(theirs).max() > 0
    err = rel_err(ours, theirs)
    print(f"{name} {composite}: rel err {err:.2e}")
    assert err <= TOL, (name, composite, err)


def test_layer_rules_match_zennit(exported):
    """Per-layer rules (by ONNX node name) over a composite, against Zennit's NameMapComposite."""
    import_zennit()
    from zennit import rules as zr

    ex = exported("vgg")
    x, seed = _inputs(ex)
    convs = [n.name for n in ex.onnx_model.graph.node if n.op_type == "Conv"]
    gemms = [n.name for n in ex.onnx_model.graph.node if n.op_type == "Gemm"]
    ours = explaind_lrp(ex, Composite("epsilon_plus", layer_rules=((convs[1], "gamma"), (gemms[0], "alpha2_beta1"),
                                                                   (convs[0], "wsquare"))), x, seed)
    nodes = {n.name: n for n in ex.onnx_model.graph.node}
    modules = {zoo.module_of_node(nodes[k]): v for k, v in [(convs[1], zr.Gamma()), (gemms[0], zr.AlphaBeta()),
                                                            (convs[0], zr.WSquare())]}
    theirs = zennit_lrp(ex, "epsilon_plus", x, seed, layer_rules=modules)
    assert rel_err(ours, theirs) <= TOL


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1"])
def test_conservation_without_bias(exported, composite):
    """With the target logit as seed, epsilon/z+/alpha-beta conserve relevance up to the bias and
    stabiliser terms: on the MLP with zero biases the input relevance sums to the logit."""
    ex = exported("mlp")
    model = onnx.ModelProto()
    model.CopyFrom(ex.onnx_model)
    for init in model.graph.initializer:
        if init.dims and len(init.dims) == 1:
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(init.dims[0], np.float32), init.name))
    x = np.abs(np.random.default_rng(3).standard_normal((2, 16))).astype(np.float32)
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    target = logits.argmax(1)
    seed = np.zeros_like(logits)
    seed[np.arange(2), target] = logits[np.arange(2), target]
    derived = relevance_graph(model, "logits", "input", Composite(composite), seed_name=SEED, grad_prefix=GRAD)
    r = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [GRAD + "input"], {"input": x, SEED: seed})[0]
    # tanh passes relevance; with zero biases every dense layer conserves it exactly (up to 1e-6)
    np.testing.assert_allclose(r.sum(1), logits[np.arange(2), target], rtol=1e-4)


def test_gating_has_no_relevance_rule(exported):
    """SE's x * sigmoid(...) is a product of two activations: no LRP rule, plain gradients still work."""
    ex = exported("senet")
    with pytest.raises(FailedPrecondition, match=r"Mul at node .*no relevance rule"):
        relevance_graph(ex.onnx_model, "logits", "input", Composite())
    assert operators_without_rule(ex.onnx_model, "logits", "input") == [("Mul", "/block/se/Mul")]
    differentiate(ex.onnx_model, "logits", ["input"])  # the gradient does not need it


# Captum ---------------------------------------------------------------------------------------


def _captum_lrp(ex, x: np.ndarray, target: list[int], rule_for) -> np.ndarray:
    from captum.attr import LRP

    model = ex.torch_model
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.MaxPool2d)):
            m.rule = rule_for(m)
    try:
        return LRP(model).attribute(torch.from_numpy(x.copy()), target=target).detach().numpy()
    finally:
        for m in model.modules():
            if hasattr(m, "rule"):
                del m.rule


def _without_biases(ex):
    """A copy of the twin with every bias zero, torch and ONNX (Captum's gamma and alpha1-beta0 keep
    the bias as it is, Zennit's and explaind's clamp it like the weights: with none they agree)."""
    import copy

    model = copy.deepcopy(ex.torch_model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.zero_()
    return type(ex)(ex.entry, model, zoo.export(model, None), ex.layer)


CAPTUM_CASES = [("vgg", "epsilon"), ("mlp", "epsilon"), ("vgg", "gamma"), ("vgg", "alpha1_beta0")]


@pytest.mark.parametrize(("name", "rule"), CAPTUM_CASES)
def test_matches_captum_lrp(exported, name, rule):
    """Captum's rules on every Conv/Linear but the first (epsilon there: Captum's gamma and alpha1-beta0
    see only positive inputs, which is where they agree with the generalised rules; every VGG layer
    they are used on reads a ReLU's output and feeds a ReLU)."""
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    ex = exported(name)
    if rule != "epsilon":
        ex = _without_biases(ex)
    x, seed = _inputs(ex)
    with torch.no_grad():
        logits = ex.torch_model(torch.from_numpy(x)).numpy()
    target = [int(t) for t in seed.argmax(1)]
    scaled = seed * logits  # Captum starts from the target logit
    linear = [n for n in ex.onnx_model.graph.node if n.op_type in ("Conv", "Gemm")]
    first = linear[0]
    ours_rule = {"epsilon": "epsilon", "gamma": "gamma", "alpha1_beta0": "alpha1_beta0"}[rule]
    layer_rules = tuple((n.name, ours_rule if n is not first and (rule != "gamma" or n.op_type == "Conv") else "epsilon")
                        for n in linear)
    ours = explaind_lrp(ex, Composite("epsilon_plus", epsilon=1e-9, layer_rules=layer_rules), x, scaled)
    first_module = dict(ex.torch_model.named_modules())[zoo.module_of_node(first)]

    def rule_for(m):
        if isinstance(m, torch.nn.MaxPool2d) or m is first_module or rule == "epsilon":
            return EpsilonRule(epsilon=1e-9)
        if rule == "gamma":
            return GammaRule(gamma=0.25) if isinstance(m, torch.nn.Conv2d) else EpsilonRule(epsilon=1e-9)
        return Alpha1_Beta0_Rule()

    theirs = _captum_lrp(ex, x, target, rule_for)
    err = rel_err(ours, theirs)
    print(f"captum {name} {rule}: rel err {err:.2e}")
    assert err <= TOL


# Through the engine: method `lrp` ----------------------------------------------------------------


def _served(ex):
    from explaind.models.config import Preprocess

    served, view = ex.in_process
    if _image(ex):
        view = dataclasses.replace(view, preprocess=Preprocess(size=None, scale=255.0, mean=tuple(MEAN), std=tuple(STD)))
    return served, view


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat", "deep_taylor"])
@pytest.mark.parametrize("name", ["resnet", "densenet", "mlp"])
def test_method_matches_zennit(exported, xp, name, composite):
    """Method lrp through the engine: the target's logit as the seed, bounds from the preprocessing."""
    from explaind.methods.lrp import Lrp

    ex = exported(name)
    x, seed = _inputs(ex, 1)
    target = int(seed.argmax())
    out, _ = xp.explain(Lrp(), {"composite": composite, "epsilon": 1e-6}, _served(ex), x[0], target, score="logit")
    with torch.no_grad():
        logit = float(ex.torch_model(torch.from_numpy(x))[0, target])
    theirs = zennit_lrp(ex, composite, x, seed * logit)[0]
    assert rel_err(out.attribution, theirs) <= TOL
    total = float(out.attribution.sum())
    assert out.figures["relevance_sum"] == pytest.approx(total, rel=1e-5, abs=1e-6)
    assert out.figures["target_relevance"] == pytest.approx(logit, rel=1e-5)
    assert out.figures["conservation_error"] == pytest.approx(abs(total - logit) / abs(logit), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("contrast", ["clrp", "sglrp"])
def test_contrastive_variants_match_zennit(exported, xp, contrast):
    """CLRP = max(0, R_t - R_dual), R_dual seeded z_t / (K - 1) on every other class; SGLRP = R_t - R_dual
    with the softmax gradient's parts as seeds: both from Zennit relevances with those seeds."""
    from explaind.methods.lrp import Lrp

    ex = exported("vgg")
    x, seed = _inputs(ex, 1)
    target = int(seed.argmax())
    out, _ = xp.explain(Lrp(), {"composite": "epsilon_plus", "contrast": contrast}, _served(ex), x[0], target,
                        score="logit")
    with torch.no_grad():
        z = ex.torch_model(torch.from_numpy(x))[0].double().numpy()
    k = len(z)
    one_hot = np.eye(k)[target]
    if contrast == "clrp":
        seeds = [z[target] * one_hot, z[target] / (k - 1) * (1 - one_hot)]
    else:
        y = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        seeds = [y[target] * (1 - y[target]) * one_hot, y[target] * y * (1 - one_hot)]
    r_t, r_d = (zennit_lrp(ex, "epsilon_plus", x, s[None].astype(np.float32))[0] for s in seeds)
    expected = np.maximum(r_t - r_d, 0) if contrast == "clrp" else r_t - r_d
    assert np.abs(expected).max() > 0
    assert rel_err(out.attribution, expected) <= TOL
    assert out.model_evaluations == 3  # the prediction, the target row, the dual row


def test_batch_norm_after_a_linear_layer_is_merged_like_zennit(exported):
    """Linear -> BatchNorm1d -> ReLU -> Linear: the batch norm folded into the Gemm (simplify.py), as
    Zennit's SequentialMergeBatchNorm merges it; unmerged it would pass relevance unchanged."""
    from torch import nn

    import_zennit()
    from zennit.canonizers import SequentialMergeBatchNorm

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(0.3 * torch.randn(8))
        bn.running_var.copy_(0.5 + torch.rand(8))
        bn.weight.copy_(0.5 + torch.rand(8))
        bn.bias.copy_(0.2 * torch.randn(8))
    model.input_shape = (6,)
    model.eval()
    proto = zoo.export(model, None)
    assert "BatchNormalization" in {n.op_type for n in proto.graph.node}
    x = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    seed = np.eye(3, dtype=np.float32)[[0, 2]]
    derived = relevance_graph(proto, "logits", "input", Composite("epsilon_plus_flat"), seed_name=SEED, grad_prefix=GRAD)
    assert "BatchNormalization" not in {n.op_type for n in derived.graph.node}
    ours = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [GRAD + "input"], {"input": x, SEED: seed})[0]
    from zennit import composites as zc

    composite = zc.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    with composite.context(model) as modified:
        inp = torch.from_numpy(x).requires_grad_(True)
        (theirs,) = torch.autograd.grad(modified(inp), inp, grad_outputs=torch.from_numpy(seed))
    assert rel_err(ours, theirs.numpy()) <= TOL


def test_linear_layers_exported_as_matmul_and_add_match_zennit():
    """nn.Linear on a [N, T, F] input exports as MatMul + Add: the bias belongs in the rule's z."""
    from torch import nn

    import_zennit()
    from zennit import composites as zc

    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.Flatten(), nn.Linear(12, 3))
    model.input_shape = (3, 5)
    model.eval()
    proto = zoo.export(model, None)
    assert "MatMul" in {n.op_type for n in proto.graph.node}
    x = np.random.default_rng(8).standard_normal((2, 3, 5)).astype(np.float32)
    seed = np.eye(3, dtype=np.float32)[[1, 2]]
    for name in ("epsilon_plus_flat", "epsilon_alpha2_beta1", "deep_taylor"):
        derived = relevance_graph(proto, "logits", "input", Composite(name), seed_name=SEED, grad_prefix=GRAD)
        ours = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            [GRAD + "input"], {"input": x, SEED: seed})[0]
        if name == "deep_taylor":
            from zennit import rules as zr
            from zennit.types import Linear

            composite = zc.SpecialFirstLayerMapComposite(layer_map=zc.layer_map_base() + [(Linear, zr.ZPlus())],
                                                         first_map=[(Linear, zr.WSquare())])
        else:
            composite = zc.COMPOSITES[name]()
        with composite.context(model) as modified:
            inp = torch.from_numpy(x).requires_grad_(True)
            (theirs,) = torch.autograd.grad(modified(inp), inp, grad_outputs=torch.from_numpy(seed))
        assert rel_err(ours, theirs.numpy()) <= TOL, name


@pytest.mark.parametrize("activation", ["SiLU", "GELU"])
def test_activations_written_out_as_products_pass_like_zennit(activation):
    """SiLU (x * sigmoid(x)) and GELU (x * (1 + erf(x / sqrt 2)) * 0.5) export as a Mul of x and a
    function of x: an activation, passed through as Zennit's Pass does. (Mish, x * tanh(softplus(x)),
    passes too in explaind; Zennit's Activation type does not list it and takes its gradient.)"""
    from torch import nn

    import_zennit()
    from zennit import composites as zc

    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), getattr(nn, activation)(), nn.Conv2d(6, 4, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model.input_shape = (3, 8, 8)
    model.eval()
    proto = zoo.export(model, None)
    assert "Mul" in {n.op_type for n in proto.graph.node}
    x = np.random.default_rng(10).standard_normal((2, 3, 8, 8)).astype(np.float32)
    seed = np.eye(3, dtype=np.float32)[[0, 1]]
    derived = relevance_graph(proto, "logits", "input", Composite("epsilon_plus_flat"), seed_name=SEED,
                              grad_prefix=GRAD)
    ours = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [GRAD + "input"], {"input": x, SEED: seed})[0]
    with zc.EpsilonPlusFlat().context(model) as modified:
        inp = torch.from_numpy(x).requires_grad_(True)
        (theirs,) = torch.autograd.grad(modified(inp), inp, grad_outputs=torch.from_numpy(seed))
    assert rel_err(ours, theirs.numpy()) <= TOL


def _inception_twin():
    """An inception-style net: a strided stem (Conv, BatchNorm, ReLU, overlapping padded MaxPool), a
    block of three concatenated branches (1x1; 1x1 then 3x3; a stride-1 max pool then 1x1), a
    grouped convolution, average pooling and a Linear head."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.b1 = nn.Sequential(nn.Conv2d(c, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.b2 = nn.Sequential(nn.Conv2d(c, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
            self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 4, 1), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            self.block = Block(12)
            self.head = nn.Sequential(nn.Conv2d(20, 16, 3, groups=4, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(16, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.stem(x)))

    torch.manual_seed(0)
    model = Net()
    model.input_shape = (3, 32, 32)
    zoo._randomize_batchnorm(model, 3)
    return model.eval()


@pytest.mark.parametrize("composite", [c for c in COMPOSITES if c != "deep_taylor"])
def test_an_inception_style_net_matches_zennit(composite):
    import_zennit()
    from zennit import composites as zc
    from zennit.canonizers import SequentialMergeBatchNorm

    model = _inception_twin()
    proto = zoo.export(model, None)
    pixels = np.random.default_rng(0).random((2, 3, 32, 32))
    x = ((pixels - MEAN.reshape(3, 1, 1)) / STD.reshape(3, 1, 1)).astype(np.float32)
    seed = np.eye(5, dtype=np.float32)[[1, 3]]
    derived = relevance_graph(proto, "logits", "input", Composite(composite, low=LOW, high=HIGH), seed_name=SEED,
                              grad_prefix=GRAD)
    ours = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [GRAD + "input"], {"input": x, SEED: seed})[0]
    bounds = {"low": torch.from_numpy(LOW), "high": torch.from_numpy(HIGH)} if composite == "epsilon_gamma_box" else {}
    with zc.COMPOSITES[composite](canonizers=[SequentialMergeBatchNorm()], **bounds).context(model) as modified:
        inp = torch.from_numpy(x).requires_grad_(True)
        (theirs,) = torch.autograd.grad(modified(inp), inp, grad_outputs=torch.from_numpy(seed))
    assert rel_err(ours, theirs.numpy()) <= TOL
