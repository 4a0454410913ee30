"""Turn an ORT-format model (onnxruntime's flatbuffer, ``.ort``) back into an ONNX model.

An ``.ort`` file is a graph onnxruntime has already optimised for a minimal build, and it is
loaded as is: no further graph optimisation runs on it.  Moonshine's int8 files keep each
weight as ``Cast`` → ``Mul`` → ``Add`` nodes over int8 initializers, so every decoder step
turned all its weights back into float32 again (about 100 ms a token on this machine).  The
same graph as ONNX lets onnxruntime fold those nodes into float32 weights once, when the
session is made, and fuse the rest (the same transcripts, several times faster).

The file is read with the flatbuffer readers that ship inside onnxruntime
(``onnxruntime.tools.ort_format_model``) and written with ``onnx``'s own helpers.  Everything an
``.ort`` graph holds that ONNX can say is carried over: nodes in their order, attributes of
every kind (subgraphs included, so ``If`` and ``Loop`` bodies convert too), dense initializers,
and the types and shapes of the graph's inputs and outputs.  Sparse initializers and the
kernel hashes of a saved session state are not; a model with sparse initializers is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["OrtFormatError", "convert_ort_to_onnx"]


class OrtFormatError(ValueError):
    """The file is not an ORT-format model this converter can carry over."""


def convert_ort_to_onnx(source: Path, target: Path) -> None:
    """Write the model in ``source`` (``.ort``) to ``target`` as an ONNX model."""
    import onnx

    model = _model_proto(source.read_bytes())
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OrtFormatError(f"the converted graph is not valid ONNX: {exc}") from None
    onnx.save(model, str(target))


def _model_proto(data: bytes) -> Any:
    from onnx import helper
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(data, 0):
        raise OrtFormatError("not an ORT-format model (no ORTM identifier)")
    model = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0).Model()
    if model is None or model.Graph() is None:
        raise OrtFormatError("the file holds no model graph")
    opsets = [
        helper.make_opsetid(_text(model.OpsetImport(i).Domain()), model.OpsetImport(i).Version())
        for i in range(model.OpsetImportLength())
    ]
    proto = helper.make_model(
        _graph(model.Graph(), _text(model.GraphDocString()) or "main"),
        opset_imports=opsets,
        ir_version=model.IrVersion(),
        producer_name=_text(model.ProducerName()),
        producer_version=_text(model.ProducerVersion()),
        domain=_text(model.Domain()),
        model_version=model.ModelVersion(),
        doc_string=_text(model.DocString()),
    )
    for i in range(model.MetadataPropsLength()):
        entry = model.MetadataProps(i)
        proto.metadata_props.add(key=_text(entry.Key()), value=_text(entry.Value()))
    return proto


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def _graph(graph: Any, name: str) -> Any:
    import onnx
    from onnx import helper

    if graph.SparseInitializersLength():
        raise OrtFormatError("sparse initializers are not supported")
    args = {
        _text(graph.NodeArgs(i).Name()): graph.NodeArgs(i) for i in range(graph.NodeArgsLength())
    }

    def value_info(arg_name: str) -> Any:
        arg = args.get(arg_name)
        kind = _type_proto(arg.Type()) if arg is not None else None
        if kind is None:
            return onnx.ValueInfoProto(name=arg_name)
        return helper.make_value_info(arg_name, kind)

    nodes = []
    for i in sorted(range(graph.NodesLength()), key=lambda i: graph.Nodes(i).Index()):
        node = graph.Nodes(i)
        proto = helper.make_node(
            _text(node.OpType()),
            [_text(node.Inputs(j)) for j in range(node.InputsLength())],
            [_text(node.Outputs(j)) for j in range(node.OutputsLength())],
            name=_text(node.Name()),
            domain=_text(node.Domain()) or None,
            doc_string=_text(node.DocString()) or None,
        )
        proto.attribute.extend(
            _attribute(node.Attributes(j)) for j in range(node.AttributesLength())
        )
        nodes.append(proto)
    initializers = [_tensor(graph.Initializers(i)) for i in range(graph.InitializersLength())]
    constant = {t.name for t in initializers}
    inputs = [
        value_info(_text(graph.Inputs(i)))
        for i in range(graph.InputsLength())
        if _text(graph.Inputs(i)) not in constant
    ]
    outputs = [value_info(_text(graph.Outputs(i))) for i in range(graph.OutputsLength())]
    return helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)


def _tensor(tensor: Any) -> Any:
    from onnx import TensorProto, helper

    name = _text(tensor.Name())
    dims = [tensor.Dims(i) for i in range(tensor.DimsLength())]
    kind = tensor.DataType()
    if kind == TensorProto.STRING:
        strings = [tensor.StringData(i) for i in range(tensor.StringDataLength())]
        return helper.make_tensor(name, kind, dims, strings)
    if tensor.ExternalDataOffset() >= 0:
        raise OrtFormatError(f"initializer {name!r} keeps its data outside the model")
    raw = tensor.RawDataAsNumpy().tobytes() if tensor.RawDataLength() else b""
    return helper.make_tensor(name, kind, dims, raw, raw=True)


def _type_proto(type_info: Any) -> Any:
    """A tensor type with its shape (a dimension's value or symbolic name), or None for a
    value whose type the file does not record."""
    from onnx import helper
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TensorTypeAndShape import (
        TensorTypeAndShape,
    )
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TypeInfoValue import (
        TypeInfoValue,
    )

    if type_info is None or type_info.ValueType() != TypeInfoValue.tensor_type:
        return None
    table = type_info.Value()
    tensor = TensorTypeAndShape()
    tensor.Init(table.Bytes, table.Pos)
    shape = tensor.Shape()
    dims: list[int | str | None] | None = None
    if shape is not None:
        dims = []
        for i in range(shape.DimLength()):
            dim = shape.Dim(i).Value()
            if dim is None:
                dims.append(None)
            elif dim.DimType() == 1:  # DimensionValueType.VALUE
                dims.append(dim.DimValue())
            else:
                dims.append(_text(dim.DimParam()) or None)
    return helper.make_tensor_type_proto(tensor.ElemType(), dims)


def _attribute(attribute: Any) -> Any:
    import onnx
    from onnx import helper
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.AttributeType import (
        AttributeType,
    )

    name, kind = _text(attribute.Name()), attribute.Type()
    kinds = onnx.AttributeProto
    if kind == AttributeType.FLOAT:
        return helper.make_attribute(name, attribute.F(), attr_type=kinds.FLOAT)
    if kind == AttributeType.INT:
        return helper.make_attribute(name, attribute.I(), attr_type=kinds.INT)
    if kind == AttributeType.STRING:
        return helper.make_attribute(name, attribute.S(), attr_type=kinds.STRING)
    if kind == AttributeType.TENSOR:
        return helper.make_attribute(name, _tensor(attribute.T()), attr_type=kinds.TENSOR)
    if kind == AttributeType.GRAPH:
        return helper.make_attribute(name, _graph(attribute.G(), name), attr_type=kinds.GRAPH)
    if kind == AttributeType.FLOATS:
        floats = [attribute.Floats(i) for i in range(attribute.FloatsLength())]
        return helper.make_attribute(name, floats, attr_type=kinds.FLOATS)
    if kind == AttributeType.INTS:
        ints = [attribute.Ints(i) for i in range(attribute.IntsLength())]
        return helper.make_attribute(name, ints, attr_type=kinds.INTS)
    if kind == AttributeType.STRINGS:
        strings = [attribute.Strings(i) for i in range(attribute.StringsLength())]
        return helper.make_attribute(name, strings, attr_type=kinds.STRINGS)
    if kind == AttributeType.TENSORS:
        tensors = [_tensor(attribute.Tensors(i)) for i in range(attribute.TensorsLength())]
        return helper.make_attribute(name, tensors, attr_type=kinds.TENSORS)
    if kind == AttributeType.GRAPHS:
        graphs = [_graph(attribute.Graphs(i), name) for i in range(attribute.GraphsLength())]
        return helper.make_attribute(name, graphs, attr_type=kinds.GRAPHS)
    raise OrtFormatError(f"attribute {name!r} has an unsupported type {kind}")
