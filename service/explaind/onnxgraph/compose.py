"""Splice explaind's prefix and suffix around the user's model to make a graph *variant*.

A variant's prefix turns (stacked per-job constants, per-row codes, per-row job index) into the
batch of perturbed inputs and writes it under the model's input name; the model runs unchanged; the
suffix turns the model's output into what the method needs (the target score, a mask sum...).
"""

from __future__ import annotations

import onnx
from onnx import helper

from .builder import MIN_OPSET, GraphBuilder


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model was written for (prefixes are built at the same one).

    Below MIN_OPSET the GraphBuilder refuses; the repository refuses such models at load time."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return MIN_OPSET


def splice(model: onnx.ModelProto, input_name: str, builder: GraphBuilder, keep: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Return a new model: builder's prefix nodes, the model's nodes, builder's suffix nodes.

    The builder's prefix must produce a tensor named `input_name` (the model's input, which stops
    being a graph input); the builder's inputs and outputs replace the model's. Nodes that neither
    those outputs nor the tensors named in `keep` need are left out.
    """
    if builder.model_position is None:
        raise ValueError("builder.mark_model() was not called between prefix and suffix")
    produced = {out for node in builder.nodes[: builder.model_position] for out in node.output}
    if input_name not in produced:
        raise ValueError(f"the prefix does not produce the model input {input_name!r}")
    graph = model.graph
    prefix = builder.nodes[: builder.model_position]
    suffix = builder.nodes[builder.model_position :]
    # Only what the variant's outputs need: a model's other outputs (an exported gradient fed by its
    # own seed input, a second head) would otherwise dangle on inputs the variant no longer has.
    nodes = needed_nodes([*prefix, *graph.node, *suffix], [o.name for o in builder.outputs] + list(keep))
    new_graph = helper.make_graph(
        nodes=nodes,
        name=f"{graph.name or 'model'}+{builder.scope}",
        inputs=[*builder.inputs, *[i for i in graph.input if i.name != input_name and _is_initializer(graph, i.name)]],
        outputs=list(builder.outputs),
        initializer=[*graph.initializer, *builder.initializers],
        value_info=list(graph.value_info),
        sparse_initializer=list(graph.sparse_initializer),
    )
    opsets = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        opsets.append(helper.make_opsetid("", builder.opset))
    composed = helper.make_model(new_graph, opset_imports=opsets, producer_name="explaind")
    composed.ir_version = model.ir_version
    for function in model.functions:
        composed.functions.append(function)
    return composed


def needed_nodes(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes that the named outputs depend on, in their order (names a subgraph reads count)."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_reads(node))
    return kept[::-1]


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_reads(inner))
    return names


def _is_initializer(graph: onnx.GraphProto, name: str) -> bool:
    return any(init.name == name for init in graph.initializer)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (Kahn's algorithm,
    keeping the existing order where it is already valid)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {t.name for t in graph.sparse_initializer}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        still: list[onnx.NodeProto] = []
        for node in pending:
            if all(name in available for name in node.input) and _subgraph_inputs_ready(node, available):
                ordered.append(node)
                available.update(node.output)
            else:
                still.append(node)
        if len(still) == len(pending):
            missing = sorted({n for node in still for n in node.input if n not in available})[:5]
            raise ValueError(f"the graph has a cycle or undefined inputs: {missing}")
        pending = still
    del graph.node[:]
    graph.node.extend(ordered)


def _subgraph_inputs_ready(node: onnx.NodeProto, available: set[str]) -> bool:
    """Outer-scope names used inside If/Loop/Scan bodies must be produced first, too."""
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            local |= {o for n in sub.node for o in n.output}
            if any(name not in available and name not in local for n in sub.node for name in n.input if name):
                return False
    return True


def chain(front: onnx.ModelProto, model: onnx.ModelProto, input_name: str, scope: str) -> tuple[onnx.ModelProto, str]:
    """`front` (one input, one output) composed in front of `model`: front's output feeds model's input
    `input_name`. Every tensor of `front` is renamed under `scope` + "/" so that no name clashes; the
    result's input is front's (renamed, returned with it), its outputs the model's, and `input_name`
    stays a tensor of the graph (what front made). Used for the learned prior of activation maximisation."""
    graph = front.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"the front model needs one input and one output, it has {len(inputs)} and "
                         f"{len(graph.output)}")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ValueError("the front model may not use subgraphs (If, Loop, Scan)")
    if any(f.domain not in ("", "ai.onnx") for f in front.opset_import):
        raise ValueError("the front model may use default-domain operators only")
    if model_opset(front) != model_opset(model):
        raise ValueError(f"the front model's opset {model_opset(front)} differs from the model's {model_opset(model)}")
    prefix = scope + "/"
    renamed = onnx.ModelProto()
    renamed.CopyFrom(front)
    g = renamed.graph
    for i, node in enumerate(g.node):
        node.input[:] = [prefix + n if n else n for n in node.input]
        node.output[:] = [prefix + n for n in node.output]
        node.name = f"{prefix}{i}/{node.name or node.op_type}"  # unique even where front's names are not
    for tensor in [*g.initializer, *g.input, *g.output, *g.value_info]:
        tensor.name = prefix + tensor.name
    bridge = helper.make_node("Identity", [g.output[0].name], [input_name], name=prefix + "to_model")
    body = model.graph
    composed = helper.make_graph(
        nodes=[*g.node, bridge, *body.node], name=f"{body.name or 'model'}+{scope}",
        inputs=[next(i for i in g.input if i.name == prefix + inputs[0].name)]
        + [i for i in body.input if i.name != input_name and _is_initializer(body, i.name)],
        outputs=list(body.output), initializer=[*g.initializer, *body.initializer],
        value_info=list(body.value_info), sparse_initializer=list(body.sparse_initializer))
    out = helper.make_model(composed, opset_imports=list(model.opset_import), producer_name="explaind")
    out.ir_version = model.ir_version
    for function in model.functions:
        out.functions.append(function)
    return out, prefix + inputs[0].name
