"""A quantized torch.fx network as a file that loads without pickle and without tracing.

Why: making an int8 network again from its state dict ran torch's FX quantization (prepare_fx and
convert_fx on the float network) in every process, 6-7 s on this project's 2 cores, most of it importing
torch._dynamo, which FX tracing pulls in, the rest FX's pattern matching; and a torch.save file loads
through (restricted) pickle. This file holds instead the graph the conversion made, as JSON (each node:
its operation, its target and its arguments), the constructor arguments of each module the graph calls,
and each tensor of the state dict as a .npy array (numpy's format, read with allow_pickle=False;
quantized tensors as their integers, scales and zero points), in one uncompressed zip:

    network.json    {"meta": ..., "state": {key: value}, "versions": {module: {"version": N}},
                     "graph": {"nodes": [...], "modules": {...}} | null}
    arrays/N.npy    the tensors, numbered in the order `state` names them

Loading builds those modules, the graph and its GraphModule directly and fills them from the arrays.

Names resolve through fixed tables only, never by importing what a file names: torch's native operators,
torch.nn.functional, the `quantized` and `aten` operator namespaces, a few functions of `operator`,
Tensor methods, and the module classes of MODULES. A file can so call only what a quantized convnet
calls. A graph that needs anything else is written without it (`graph` null): its state dict still loads
the same way, into a graph that the caller rebuilds with FX (the slow path).
"""

from __future__ import annotations

import inspect
import io
import json
import operator
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.nn import intrinsic as nni
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq

JSON_NAME = "network.json"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same network makes the same bytes

MODULES = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (
        nnq.Conv2d,
        nniq.ConvReLU2d,
        nnq.Linear,
        nniq.LinearReLU,
        nn.Conv2d,
        nni.ConvReLU2d,
        nn.Linear,
        nni.LinearReLU,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.ReLU,
        nn.Identity,
        nn.Flatten,
        nn.Dropout,
    )
}
MODULE_NAMES = {cls: name for name, cls in MODULES.items()}
OPERATORS = ("add", "sub", "mul", "truediv", "floordiv", "neg", "getitem", "matmul")
OPERATOR_NAMESPACES = ("quantized", "aten")
DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float32, torch.float64, torch.float16, torch.int8, torch.uint8, torch.int32, torch.int64,
        torch.bool, torch.qint8, torch.quint8, torch.qint32,
    )
}  # fmt: skip
MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format,
}


class NotDescribable(ValueError):
    """A network this format cannot name whole (its message says what); it is written without its graph."""


class Unreadable(ValueError):
    """A file that is not a network of this format, or names something it may not."""


def write(meta: Mapping[str, Any], state: Mapping[str, Any], graph: Mapping[str, Any] | None) -> bytes:
    """The zip of the module docstring: `meta` (JSON-able), the state dict `state`, and `graph` (from
    `describe`, or None)."""
    arrays: list[np.ndarray] = []
    document = {
        "meta": meta,
        "state": {key: _encode(value, arrays) for key, value in state.items()},
        "versions": dict(getattr(state, "_metadata", {})),  # how modules read their entries back
        "graph": graph,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo(JSON_NAME, ZIP_TIME), json.dumps(document))
        for number, array in enumerate(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(_array_name(number), ZIP_TIME), member.getvalue())
    return buffer.getvalue()


def read(data: bytes) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """`meta`, the state dict and the graph description of a file `write` made (Unreadable otherwise)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            document = json.loads(archive.read(JSON_NAME))

            def array(number: int) -> np.ndarray:
                member = io.BytesIO(archive.read(_array_name(int(number))))
                return np.lib.format.read_array(member, allow_pickle=False)

            state = OrderedDict(
                (key, _decode(value, array=array)) for key, value in document["state"].items()
            )
        state._metadata = OrderedDict(document["versions"])  # as torch's state_dict() carries them
        return document["meta"], state, document["graph"]
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise Unreadable(f"not a network file of this facerec ({_first_line(error)})") from None


def describe(module: fx.GraphModule) -> dict[str, Any]:
    """The graph of `module` and the constructor arguments of the modules it calls, as JSON
    (NotDescribable when it uses anything the tables of the module docstring lack)."""
    nodes, modules = [], {}
    for node in module.graph.nodes:
        if node.op == "call_module":
            modules[node.target] = _describe_module(module.get_submodule(node.target))
        nodes.append(
            {
                "op": node.op,
                "name": node.name,
                "target": _target_name(node),
                "args": _encode(node.args),
                "kwargs": _encode(dict(node.kwargs)),
            }
        )
    return {"nodes": nodes, "modules": modules}


def build(graph: Mapping[str, Any], state: Mapping[str, Any]) -> fx.GraphModule:
    """The GraphModule `graph` describes, its modules and attributes filled from `state` (Unreadable
    when the description names what it may not, or does not fit `state`)."""
    try:
        root = nn.Module()
        for path, spec in graph["modules"].items():
            _place(root, path, _module(spec))
        made = fx.Graph()
        env: dict[str, fx.Node] = {}
        for node in graph["nodes"]:
            op, target = node["op"], node["target"]
            args = _decode(node["args"], nodes=env)
            kwargs = _decode(node["kwargs"], nodes=env)
            if op == "get_attr" and target in state:
                _place(root, target, state[target], buffer=True)
            env[node["name"]] = _node(made, op, target, args, kwargs)
        network = fx.GraphModule(root, made)
        network.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise Unreadable(f"its graph does not build ({_first_line(error)})") from None
    return network.eval()


def _node(graph: fx.Graph, op: str, target: str, args: Any, kwargs: Any) -> fx.Node:
    if op == "placeholder":
        return graph.placeholder(target, default_value=args[0] if args else inspect.Signature.empty)
    if op == "output":
        return graph.output(args[0])
    if op == "call_function":
        return graph.call_function(_function(target), tuple(args), kwargs)
    if op == "call_method":
        if target.startswith("_") or not callable(getattr(torch.Tensor, target, None)):
            raise ValueError(f"unknown tensor method {target}")
        return graph.call_method(target, tuple(args), kwargs)
    if op == "call_module":
        return graph.call_module(target, tuple(args), kwargs)
    if op == "get_attr":
        return graph.get_attr(target)
    raise ValueError(f"unknown node operation {op}")


def _target_name(node: fx.Node) -> str:
    if node.op != "call_function":
        return str(node.target)
    function = node.target
    if isinstance(function, torch._ops.OpOverloadPacket | torch._ops.OpOverload):
        name = f"torch.ops.{function}"
    else:
        name = next(
            (
                f"{prefix}.{function.__name__}"
                for prefix, namespace in (("torch", torch._C._VariableFunctions), ("torch.nn.functional", F))
                if getattr(namespace, getattr(function, "__name__", ""), None) is function
            ),
            f"operator.{getattr(function, '__name__', '')}",
        )
    try:
        if _function(name) is function:
            return name
    except ValueError:
        pass
    raise NotDescribable(f"the function {function}")


def _function(name: str) -> Any:
    """The callable `name` names, from the tables of the module docstring only (ValueError otherwise)."""
    namespace, _, attribute = name.rpartition(".")
    found = None
    if namespace == "torch":
        found = getattr(torch._C._VariableFunctions, attribute, None)
    elif namespace == "torch.nn.functional" and not attribute.startswith("_"):
        found = getattr(F, attribute, None)
    elif namespace == "operator" and attribute in OPERATORS:
        found = getattr(operator, attribute)
    elif name.startswith("torch.ops."):
        space, *rest = name.removeprefix("torch.ops.").split(".")
        if space in OPERATOR_NAMESPACES and 1 <= len(rest) <= 2:
            found = getattr(getattr(torch.ops, space), rest[0], None)
            found = getattr(found, rest[1], None) if found is not None and len(rest) == 2 else found
    if not callable(found):
        raise ValueError(f"unknown function {name}")
    return found


def _describe_module(module: nn.Module) -> dict[str, Any]:
    name = MODULE_NAMES.get(type(module))
    if name is None:
        raise NotDescribable(f"the module class {type(module).__qualname__}")
    if isinstance(module, nni._FusedModule):  # float conv + relu and kin: a sequence of known modules
        return {"type": name, "children": [_describe_module(child) for child in module]}
    return {"type": name, "arguments": {key: _encode(value) for key, value in _arguments(module)}}


def _arguments(module: nn.Module):
    """The constructor arguments that made `module`, read back from its attributes (the device and
    dtype are the defaults; a quantized module's tensors come from the state dict)."""
    for name, parameter in inspect.signature(type(module).__init__).parameters.items():
        if name in ("self", "device", "dtype") or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        if name in ("bias", "bias_"):
            bias = module.bias() if callable(module.bias) else module.bias  # quantized modules: a method
            yield name, bias is not None
        elif hasattr(module, name):
            yield name, getattr(module, name)
        elif parameter.default is parameter.empty:
            raise NotDescribable(f"the argument {name} of {type(module).__qualname__}")


def _module(spec: Mapping[str, Any]) -> nn.Module:
    cls = MODULES[spec["type"]]
    if "children" in spec:
        return cls(*(_module(child) for child in spec["children"]))
    return cls(**{key: _decode(value) for key, value in spec["arguments"].items()})


def _place(root: nn.Module, path: str, value: nn.Module | torch.Tensor, buffer: bool = False) -> None:
    """Put `value` at the dotted `path` under `root`, making plain containers on the way."""
    *parents, name = path.split(".")
    holder = root
    for part in parents:
        if not hasattr(holder, part):
            holder.add_module(part, nn.Module())
        holder = getattr(holder, part)
    if buffer:
        holder.register_buffer(name, value)
    else:
        holder.add_module(name, value)


def _encode(value: Any, arrays: list[np.ndarray] | None = None) -> Any:
    """`value` as JSON: graph nodes by name, tensors (with `arrays`) as numbered arrays."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.Tensor) and arrays is not None:
        return _encode_tensor(value, arrays)
    if isinstance(value, torch.dtype):
        return {"dtype": _dtype_name(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": next(k for k, v in MEMORY_FORMATS.items() if v == value)}
    if isinstance(value, slice):
        return {"slice": _encode([value.start, value.stop, value.step])}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, arrays) for item in value]}
    if isinstance(value, list):
        return [_encode(item, arrays) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {"dict": {key: _encode(item, arrays) for key, item in value.items()}}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise NotDescribable(f"a value of type {type(value).__name__}")


def _encode_tensor(tensor: torch.Tensor, arrays: list[np.ndarray]) -> dict[str, Any]:
    def array(t: torch.Tensor) -> int:
        arrays.append(t.detach().cpu().contiguous().numpy())
        return len(arrays) - 1

    if not tensor.is_quantized:
        if tensor.dtype not in DTYPES.values() or tensor.dtype.is_complex:
            raise NotDescribable(f"a tensor of {tensor.dtype}")
        return {"tensor": array(tensor)}
    integers = array(tensor.int_repr())
    if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return {"quantized": integers, "scale": tensor.q_scale(), "zero_point": tensor.q_zero_point()}
    if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return {
            "quantized": integers,
            "scales": array(tensor.q_per_channel_scales()),
            "zero_points": array(tensor.q_per_channel_zero_points()),
            "axis": tensor.q_per_channel_axis(),
        }
    raise NotDescribable(f"a tensor quantized as {tensor.qscheme()}")


def _decode(value: Any, nodes: Mapping[str, fx.Node] | None = None, array=None) -> Any:
    """What `_encode` encoded, nodes from `nodes`, arrays read by `array(number)`."""
    if isinstance(value, list):
        return [_decode(item, nodes, array) for item in value]
    if not isinstance(value, dict):
        return value
    (kind,) = set(value) & {"node", "dtype", "memory_format", "slice", "tuple", "dict", "tensor", "quantized"}
    if kind == "node" and nodes is not None:
        return nodes[value["node"]]
    if kind == "dtype":
        return DTYPES[value["dtype"]]
    if kind == "memory_format":
        return MEMORY_FORMATS[value["memory_format"]]
    if kind == "slice":
        return slice(*_decode(value["slice"]))
    if kind == "tuple":
        return tuple(_decode(item, nodes, array) for item in value["tuple"])
    if kind == "dict":
        return {key: _decode(item, nodes, array) for key, item in value["dict"].items()}
    if array is None:
        raise ValueError(f"a {kind} outside the state dict")
    if kind == "tensor":
        return torch.from_numpy(array(value["tensor"]))
    integers = torch.from_numpy(array(value["quantized"]))
    if "scales" in value:
        scales, zero_points = (torch.from_numpy(array(value[key])) for key in ("scales", "zero_points"))
        return torch._make_per_channel_quantized_tensor(integers, scales, zero_points, int(value["axis"]))
    return torch._make_per_tensor_quantized_tensor(integers, float(value["scale"]), int(value["zero_point"]))


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if DTYPES.get(name) != dtype:
        raise NotDescribable(f"the dtype {dtype}")
    return name


def _array_name(number: int) -> str:
    return f"arrays/{number}.npy"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
