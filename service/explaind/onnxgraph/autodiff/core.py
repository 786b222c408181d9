"""Reverse-mode differentiation of an ONNX graph, written as ONNX nodes.

Given a tensor `output` (y, typically the logits [N, classes]) and tensors `wrt` (the input, an
intermediate activation), the derived graph takes one more input, the seed s shaped like y, and
additionally outputs d<s, y>/dt for every t in wrt, shaped like t:

1. forward activity: a tensor is *active* when it depends differentiably on some t in wrt (integer
   and boolean tensors, shape arithmetic and operators in NON_DIFFERENTIABLE never are);
2. relevance: walking back from y through active tensors gives the nodes on the differentiated path;
3. backward: these nodes are visited in reverse topological order; each one's rule turns the
   gradients of its outputs into gradients of its inputs. A tensor read by several nodes gets the
   sum of their contributions, complete before its producer is visited.

Before that, `simplify` rewrites the forward graph where that keeps every tensor asked for and makes
the backward cheaper (batch norm folded into its Conv, a Relu moved after its MaxPool). Everything
off the path stays as it is and needs no rule. onnxruntime alone runs the result.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import onnx
import onnx.inliner
from onnx import helper

from . import rules as _rules  # imported for its side effect: it registers the rule table
from .emitter import Emitter
from .errors import UnsupportedOperator
from .info import GraphInfo
from .registry import NodeRule, NodeRuleChooser, RuleContext, is_non_differentiable, known_variants, lookup
from .simplify import simplify

del _rules  # (the rule table is all that was wanted of it)

MIN_OPSET = 11


def differentiate(
    model: onnx.ModelProto,
    output: str,
    wrt: list[str],
    *,
    rule: str = "plain",
    seed_name: str = "explaind::seed",
    grad_prefix: str = "explaind::grad::",
    node_rules: NodeRuleChooser | None = None,
) -> onnx.ModelProto:
    """Return a new model: `model` plus the input `seed_name` (shaped like `output`) and the outputs
    ``grad_prefix + t`` = d sum(seed * output) / dt for each t in `wrt`.

    `rule` picks the backward rules: "plain" (the true gradient), "guided" (guided backpropagation)
    or "deconvnet". `node_rules` may choose another variant (and its parameters) per node: LRP's
    composites. Raises UnsupportedOperator for the first operator on the path without a rule.
    """
    model, walk = _walk(model, output, wrt, rule, seed_name, collect=None, node_rules=node_rules)
    taken = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    taken |= {o for n in model.graph.node for o in n.output}
    clashes = [grad_prefix + t for t in wrt if grad_prefix + t in taken]
    if clashes:
        raise ValueError(f"grad_prefix: the names {clashes} are already tensors of the graph")
    return _assemble(model, walk, wrt, seed_name, grad_prefix)


def unsupported_operators(model: onnx.ModelProto, output: str, wrt: list[str], *, rule: str = "plain",
                          node_rules: NodeRuleChooser | None = None) -> list[tuple[str, str]]:
    """(op_type, node name) of every operator on the differentiated path that has no usable rule."""
    found: list[tuple[str, str]] = []
    _walk(model, output, wrt, rule, "explaind::seed", collect=found, node_rules=node_rules)
    return found


class _Walk:
    def __init__(self, emitter: Emitter, info: GraphInfo, grads: dict[str, str | None], seed_type: onnx.TypeProto) -> None:
        self.emitter = emitter
        self.info = info
        self.grads = grads
        self.seed_type = seed_type


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return MIN_OPSET


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index} ({node.op_type} -> {', '.join(node.output)})"


def _walk(
    model: onnx.ModelProto, output: str, wrt: list[str], variant: str, seed_name: str, collect: list | None,
    node_rules: NodeRuleChooser | None = None,
) -> tuple[onnx.ModelProto, _Walk]:
    if variant not in known_variants():
        raise ValueError(f"rule: expected one of {', '.join(sorted(known_variants()))}, got {variant!r}")
    if not wrt:
        raise ValueError("wrt: expected at least one tensor name, got none")
    if len(set(wrt)) != len(wrt):
        raise ValueError(f"wrt: expected distinct tensor names, got {wrt}")
    model = copy.deepcopy(model)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise ValueError(f"model opset: expected at least {MIN_OPSET}, got {opset}")
    graph = model.graph
    nodes = list(graph.node)

    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    known |= {o for n in nodes for o in n.output if o}
    for name in [output, *wrt]:
        if name not in known:
            raise ValueError(f"tensor {name!r} is neither a graph input nor produced by a node")
    if seed_name in known:
        raise ValueError(f"seed_name {seed_name!r} is already a tensor of the graph")

    simplify(model, keep={output, *wrt}, variant=variant)
    graph = model.graph
    nodes = list(graph.node)
    info = GraphInfo(model)

    # 1. forward activity
    active = {t for t in wrt if info.is_float(t)}
    names = [_node_name(n, i) for i, n in enumerate(nodes)]
    chosen = node_rules(model, names) if node_rules is not None else {}
    node_rule = [chosen.get(name) or NodeRule(variant) for name in names]
    specs = [lookup(r.variant, n) for r, n in zip(node_rule, nodes)]
    for node, spec in zip(nodes, specs):
        if is_non_differentiable(node):
            continue
        carrying = [i for i, name in enumerate(node.input) if name and (spec is None or spec.carries(i))]
        if any(node.input[i] in active for i in carrying):
            for k, out in enumerate(node.output):
                if out and (spec is None or spec.output_carries(k)) and info.is_float(out):
                    active.add(out)

    # 2. relevance: nodes on a path from wrt to output
    relevant = {output} if output in active else set()
    path: list[int] = []
    for index in range(len(nodes) - 1, -1, -1):
        node, spec = nodes[index], specs[index]
        if is_non_differentiable(node) or not any(o in relevant for o in node.output if o):
            continue
        ins = [i for i, name in enumerate(node.input) if name in active and (spec is None or spec.carries(i))]
        if ins:
            path.append(index)
            relevant.update(node.input[i] for i in ins)

    # 3. backward
    emitter = Emitter(opset, info, set(known) | {seed_name})
    contributions: dict[str, list[str]] = defaultdict(list)
    if output in relevant:
        contributions[output].append(seed_name)
    default_dtype = info.elem_type(output) or onnx.TensorProto.FLOAT

    def total(name: str) -> str | None:
        terms = contributions.get(name)
        if not terms:
            return None
        if len(terms) > 1:
            contributions[name] = [emitter.add_all(terms)]
        return contributions[name][0]

    for index in path:
        node, spec = nodes[index], specs[index]
        name = names[index]
        gy = [total(o) if o in relevant else None for o in node.output]
        need = [bool(n) and n in relevant and n in active and (spec is None or spec.carries(i)) for i, n in enumerate(node.input)]
        try:
            if spec is None:
                raise UnsupportedOperator(node.op_type, name, node.domain)
            blocked = [i for i, needed in enumerate(need) if needed and not spec.implements(i)]
            if blocked:
                which = ", ".join(f"input {i} ({node.input[i]!r})" for i in blocked)
                raise UnsupportedOperator(node.op_type, name, node.domain, f"no gradient with respect to {which}")
            if all(g is None for g in gy):
                continue
            ctx = RuleContext(node, name, emitter, info, node_rule[index].variant, gy, need, default_dtype,
                              node_rule[index].params)
            grads = spec.fn(ctx)
        except UnsupportedOperator as err:
            if collect is None:
                raise
            collect.append((err.op_type, err.node_name))
            grads = [emitter.fresh("placeholder") if needed else None for needed in need]
        for i, g in enumerate(grads):
            if g is not None and i < len(need) and need[i]:
                contributions[node.input[i]].append(g)

    grads = {t: total(t) for t in wrt}
    seed_type = _type_of(info, output, default_dtype)
    return model, _Walk(emitter, info, grads, seed_type)


def _type_of(info: GraphInfo, name: str, default_dtype: int) -> onnx.TypeProto:
    elem = info.elem_type(name) or default_dtype
    dims = info.dims(name)
    return helper.make_tensor_type_proto(elem, dims)


def _assemble(model: onnx.ModelProto, walk: _Walk, wrt: list[str], seed_name: str, grad_prefix: str) -> onnx.ModelProto:
    graph = model.graph
    e = walk.emitter
    new_outputs = []
    for t in wrt:
        g = walk.grads[t]
        if g is None:  # t does not influence output: its gradient is zero
            g = e.zeros_like(t, walk.info.elem_type(t) or onnx.TensorProto.FLOAT)
        out_name = grad_prefix + t
        e.op("Identity", [g], [out_name])
        new_outputs.append(helper.make_value_info(out_name, _type_of(walk.info, t, walk.seed_type.tensor_type.elem_type)))
    graph.input.append(helper.make_value_info(seed_name, walk.seed_type))
    graph.node.extend(e.nodes)
    graph.initializer.extend(e.initializers)
    graph.output.extend(new_outputs)
    return model
