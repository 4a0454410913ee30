"""ORT-format models back to ONNX (``omni.lite.ort_format``): a graph made here with every kind
of attribute, saved by onnxruntime itself as ``.ort`` and converted back, must compute what the
``.ort`` file computes; so must Moonshine's real graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from omni.api import EngineUnavailable  # noqa: E402
from omni.lite import recognizers  # noqa: E402
from omni.lite.ort_format import OrtFormatError, convert_ort_to_onnx  # noqa: E402
from omni.lite.recognizers import moonshine_model_dir, moonshine_onnx_files  # noqa: E402


def _branch(name: str, op: str) -> Any:
    """A subgraph that uses the outer graph's dequantised weight."""
    return helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "weight"], [f"{name}_mm"]),
            helper.make_node(op, [f"{name}_mm"], [f"{name}_out"], alpha=0.25),
        ],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["batch", 3])],
    )


def _model() -> Any:
    """Int8 weights dequantised by Cast → Mul (as Moonshine's files hold them), an If with two
    subgraphs, and attributes of each kind: int, ints, float, floats, string, strings, tensor,
    graph (``Constant`` nodes would not do: onnxruntime makes them initializers on loading)."""
    rng = np.random.default_rng(7)
    weight = rng.integers(-127, 127, size=(4, 3), dtype=np.int8)
    nodes = [
        helper.make_node("Cast", ["weight_q"], ["weight_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["weight_f", "scale"], ["weight"]),
        helper.make_node("If", ["flag"], ["chosen"], then_branch=_branch("then", "LeakyRelu"),
                         else_branch=_branch("else", "Elu")),
        helper.make_node("Transpose", ["chosen"], ["turned"], perm=[1, 0]),
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
        helper.make_node(
            "LabelEncoder", ["words"], ["floats"], domain="ai.onnx.ml",
            keys_strings=["yes", "no", "maybe"], values_floats=[0.5, -1.5, 2.0], default_float=9.0,
        ),
        helper.make_node("Identity", ["words"], ["labels"]),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["filled"],
            value=helper.make_tensor("fill", TensorProto.FLOAT, [1], [3.5]),
        ),
        helper.make_node("Add", ["filled", "floats"], ["summed"]),
    ]  # fmt: skip
    initializers = [
        helper.make_tensor("weight_q", TensorProto.INT8, [4, 3], weight.tobytes(), raw=True),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [0.02]),
        helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 2]),
        helper.make_tensor("shape", TensorProto.INT64, [2], [2, 3]),
    ]
    graph = helper.make_graph(
        nodes,
        "round-trip",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
            helper.make_tensor_value_info("words", TensorProto.STRING, [3]),
        ],
        [
            helper.make_tensor_value_info("turned", TensorProto.FLOAT, [3, "batch"]),
            helper.make_tensor_value_info("padded", TensorProto.FLOAT, ["batch", 7]),
            helper.make_tensor_value_info("labels", TensorProto.STRING, [3]),
            helper.make_tensor_value_info("summed", TensorProto.FLOAT, [2, 3]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _save_as_ort(model: Any, folder: Path) -> Path:
    """The model as onnxruntime writes it in its own format, unoptimised (its nodes as made)."""
    source = folder / "model.onnx"
    onnx.save(model, str(source))
    target = folder / "model.ort"
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    assert target.read_bytes()[4:8] == b"ORTM"
    return target


def _session(path: Path) -> Any:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_an_ort_file_converts_back_to_a_graph_that_computes_the_same(tmp_path: Path) -> None:
    model = _model()
    ort_file = _save_as_ort(model, tmp_path)
    converted = tmp_path / "converted.onnx"
    convert_ort_to_onnx(ort_file, converted)

    back = onnx.load(str(converted))
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in model.graph.node]
    if_node = next(n for n in back.graph.node if n.op_type == "If")
    branches = {a.name: [n.op_type for n in a.g.node] for a in if_node.attribute}
    assert branches == {"then_branch": ["MatMul", "LeakyRelu"], "else_branch": ["MatMul", "Elu"]}
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in back.graph.input}  # fmt: skip
    assert inputs == {"x": ["batch", 4], "flag": [], "words": [3]}

    original, again = _session(ort_file), _session(converted)
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    for flag in (True, False):
        feed = {"x": x, "flag": np.array(flag), "words": np.array(["no", "maybe", "other"])}
        expected = original.run(None, feed)
        got = again.run(None, feed)
        for want, have in zip(expected, got, strict=True):
            if want.dtype == object:
                assert list(have) == list(want) == ["no", "maybe", "other"]
            else:
                np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6)
    # The two branches differ, so a swapped or lost subgraph would have shown.
    feeds = [{"x": x, "flag": np.array(f), "words": np.array(["yes"] * 3)} for f in (True, False)]
    assert not np.allclose(again.run(["turned"], feeds[0])[0], again.run(["turned"], feeds[1])[0])
    # The string and float lists reached LabelEncoder: 3.5 filled, plus the codes of the words.
    np.testing.assert_allclose(again.run(["summed"], feed)[0], [[2.0, 5.5, 12.5]] * 2)


def test_a_file_that_is_not_an_ort_model_is_refused(tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx.save(_model(), str(onnx_file))
    with pytest.raises(OrtFormatError, match="not an ORT-format model"):
        convert_ort_to_onnx(onnx_file, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_without_onnx_moonshine_stays_available_and_only_the_conversion_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    try:
        moonshine_model_dir()
    except EngineUnavailable:
        pytest.skip("moonshine-cpp has no wheel for this platform")
    real = recognizers._installed
    monkeypatch.setattr(recognizers, "_installed", lambda module: module != "onnx" and real(module))
    assert recognizers.resolve_recognizer("auto") == "moonshine"
    with pytest.raises(EngineUnavailable, match="needs the onnx package"):
        moonshine_onnx_files(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_moonshine_as_onnx_computes_what_its_ort_files_compute(tmp_path: Path) -> None:
    try:
        source = moonshine_model_dir()
    except EngineUnavailable:
        pytest.skip("moonshine-cpp has no wheel for this platform")
    files = moonshine_onnx_files(str(tmp_path))
    assert files["encoder_model"].parent == tmp_path / "moonshine-base-en"
    # Made once: a second call finds the same files and does not rewrite them.
    stamps = {stem: path.stat().st_mtime_ns for stem, path in files.items()}
    assert moonshine_onnx_files(str(tmp_path)) == files
    assert {stem: path.stat().st_mtime_ns for stem, path in files.items()} == stamps
    assert not list(files["encoder_model"].parent.glob(".*partial"))

    # A second of noisy tone through each encoder, then one decoder step from the start token.
    t = np.arange(16000, dtype=np.float32) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.cos(t * 7919)).astype(np.float32)
    states = []
    for encoder in (_session(source / "encoder_model.ort"), _session(files["encoder_model"])):
        states.append(encoder.run(None, {"input_values": audio[None, :]})[0])
    np.testing.assert_allclose(states[1], states[0], rtol=1e-3, atol=1e-3)

    logits = []
    for path in (source / "decoder_model_merged.ort", files["decoder_model_merged"]):
        decoder = _session(path)
        feed: dict[str, Any] = {
            "input_ids": np.array([[1]], dtype=np.int64),
            "encoder_hidden_states": states[0],
            "use_cache_branch": np.array([False]),
        }
        for arg in decoder.get_inputs():
            if arg.name.startswith("past_key_values"):
                feed[arg.name] = np.zeros((1, 8, 1, 52), dtype=np.float32)
        logits.append(decoder.run(["logits"], feed)[0])
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-3, atol=1e-3)
    assert int(logits[1][0, -1].argmax()) == int(logits[0][0, -1].argmax())
