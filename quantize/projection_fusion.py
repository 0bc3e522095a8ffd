"""Fuse the query, key and value projections of an OpenVINO model into one MatMul.

At batch 1 every decode step reads each weight once, and a small MatMul streams its weight far below the memory
bandwidth: in SmolLM2-135M the k and v projections (192 x 576) ran at about a third of the rate of the MLP. OpenVINO's
CPU plugin has its own QKV fusion, but it refuses to run on fewer than 3 cores, so on a 2-core host each of q, k and
v stays its own kernel call. One [q+k+v, hidden] MatMul followed by a split computes the same rows in one call.

The weight may be a plain constant or NNCF's decompression subgraph (int8/int4 constant, convert, zero point,
scale, reshape): each per-row constant is concatenated along the output axis and the subgraph rebuilt on top.
Gate/up pairs are left alone: the plugin fuses them into its LLMMLP kernel, which a pre-fused MatMul would defeat.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_SIBLINGS = 3  # q, k, v; a gate/up pair has 2 and belongs to the plugin's MLP fusion
FUSED_SUFFIX = "/fused_projections"  # on each fused MatMul's name: how is_fused tells a fused export


def _concat_rows(constants):
    """One constant holding the rows of `constants` in order. Works on raw bytes, so packed int4/uint4 constants
    concatenate as they are (a row of a packed tensor is whole bytes whenever the row has an even element count)."""
    import numpy as np
    import openvino as ov

    shape = list(constants[0].get_output_shape(0))
    shape[0] = sum(c.get_output_shape(0)[0] for c in constants)
    tensor = ov.Tensor(constants[0].get_output_element_type(0), shape)
    target = tensor.data.reshape(-1).view(np.uint8)
    source = np.concatenate([np.ascontiguousarray(c.data).reshape(-1).view(np.uint8) for c in constants])
    if target.size != source.size:  # rows that end mid-byte: leave this group unfused
        return None
    target[:] = source
    return ov.op.Constant(tensor).output(0)


def _merge(nodes, rows: list[int]):
    """The output of one weight subgraph computing the rows of every subgraph in `nodes` (parallel subgraphs, one
    per projection, `rows` output rows each), or None when they differ in a way this does not handle."""
    import numpy as np
    from openvino import opset13 as ops

    kind = nodes[0].get_type_name()
    if any(n.get_type_name() != kind or n.get_output_element_type(0) != nodes[0].get_output_element_type(0)
           for n in nodes):
        return None
    if kind == "Constant":
        shapes = [list(n.get_output_shape(0)) for n in nodes]
        if all(s and s[0] == r and s[1:] == shapes[0][1:] for s, r in zip(shapes, rows)):
            return _concat_rows(nodes)
        if all(s == shapes[0] for s in shapes) and all(np.array_equal(nodes[0].data, n.data) for n in nodes[1:]):
            return nodes[0].output(0)  # a shared scalar (a zero point, say): one copy serves every row
        return None
    if any(n.get_attributes() != nodes[0].get_attributes() for n in nodes):
        return None
    if kind == "Reshape":
        targets = [n.input_value(1).get_node() for n in nodes]
        if any(t.get_type_name() != "Constant" for t in targets):
            return None
        shapes = [list(t.data) for t in targets]
        if not all(s[0] == r and s[1:] == shapes[0][1:] for s, r in zip(shapes, rows)):
            return None
        data = _merge([n.input_value(0).get_node() for n in nodes], rows)
        if data is None:
            return None
        shape = ops.constant(np.array([sum(rows), *shapes[0][1:]], dtype=np.int64))
        return ops.reshape(data, shape, special_zero=nodes[0].get_attributes()["special_zero"]).output(0)
    build = {
        "Convert": lambda args, node: ops.convert(args[0], node.get_output_element_type(0)),
        "Multiply": lambda args, node: ops.multiply(*args, auto_broadcast=node.get_attributes()["auto_broadcast"]),
        "Subtract": lambda args, node: ops.subtract(*args, auto_broadcast=node.get_attributes()["auto_broadcast"]),
    }.get(kind)
    if build is None:
        return None
    args = []
    for i in range(nodes[0].get_input_size()):
        merged = _merge([n.input_value(i).get_node() for n in nodes], rows)
        if merged is None:
            return None
        args.append(merged)
    return build(args, nodes[0]).output(0)


def _sibling_projections(model) -> list[list]:
    """MatMuls against a weight (transpose_b) grouped by the tensor they multiply, in model order."""
    groups = defaultdict(list)
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        attributes = node.get_attributes()
        if attributes["transpose_a"] or not attributes["transpose_b"]:
            continue
        if not node.get_output_partial_shape(0)[-1].is_static:
            continue
        source = node.input_value(0)
        groups[(source.get_node().get_name(), source.get_index())].append(node)
    return [group for group in groups.values() if len(group) >= MIN_SIBLINGS]


def fuse_projections(model) -> int:
    """Fuse each group of >= 3 projections of one input into a MatMul plus VariadicSplit, in place; return how many
    groups were fused. Each consumer sees a tensor of the same shape and values as before."""
    import numpy as np
    from openvino import opset13 as ops

    fused = 0
    for group in _sibling_projections(model):
        rows = [node.get_output_partial_shape(0)[-1].get_length() for node in group]
        weight = _merge([node.input_value(1).get_node() for node in group], rows)
        if weight is None:
            logger.debug("left %s unfused: its weights differ in form", [n.get_friendly_name() for n in group])
            continue
        matmul = ops.matmul(group[0].input_value(0), weight, transpose_a=False, transpose_b=True)
        matmul.set_friendly_name(group[0].get_friendly_name() + FUSED_SUFFIX)
        split = ops.variadic_split(matmul, ops.constant(np.int64(-1)), ops.constant(np.array(rows, dtype=np.int64)))
        for index, node in enumerate(group):
            node.output(0).replace(split.output(index))
        fused += 1
    if fused:
        model.validate_nodes_and_infer_types()
    return fused


def fuse_projections_in_folder(folder) -> int:
    """Rewrite `folder`/openvino_model.xml (and .bin) with its projections fused; return the number of fused groups.

    The .xml and .bin are a pair that cannot be renamed together, so the original pair is kept (hard links) until
    both are in place; a run killed in between is undone by the next one before it starts over."""
    import openvino as ov

    xml = Path(folder) / "openvino_model.xml"
    if not xml.is_file():
        raise FileNotFoundError(f"{folder} has no openvino_model.xml: it is not an OpenVINO export folder")
    original = xml.with_name("openvino_model.unfused.xml")
    if original.is_file() and original.with_suffix(".bin").is_file():  # an interrupted rewrite: restore first
        for suffix in (".bin", ".xml"):
            kept, current = original.with_suffix(suffix), xml.with_suffix(suffix)
            if current.samefile(kept):  # rename() between two links of one file does nothing (POSIX)
                kept.unlink()
            else:
                kept.replace(current)
    original.with_suffix(".bin").unlink(missing_ok=True)
    model = ov.Core().read_model(xml)
    fused = fuse_projections(model)
    if fused:
        staged = xml.with_name("openvino_model.fused.xml")
        # Weights are already in their final precision (fp32 stays fp32, NNCF's int8/int4 stay packed).
        ov.save_model(model, staged, compress_to_fp16=False)
        del model
        for suffix in (".bin", ".xml"):
            os.link(xml.with_suffix(suffix), original.with_suffix(suffix))
        staged.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        staged.replace(xml)
        original.unlink()  # the .xml first: a lone .bin left behind is only removed, never restored
        original.with_suffix(".bin").unlink()
    return fused


def is_fused(folder) -> bool:
    """True when `folder`'s model went through fuse_projections (exports made before it did not)."""
    return FUSED_SUFFIX in (Path(folder) / "openvino_model.xml").read_text(errors="replace")


def main(argv: list[str] | None = None) -> int:
    """python -m quantize.projection_fusion FOLDER...: fuse exports made before export_openvino did it itself."""
    import sys

    folders = sys.argv[1:] if argv is None else argv
    if not folders:
        print("usage: python -m quantize.projection_fusion OPENVINO_FOLDER...", file=sys.stderr)
        return 2
    for folder in folders:
        try:
            print(f"{folder}: fused {fuse_projections_in_folder(folder)} projection groups")
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
