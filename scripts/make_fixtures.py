#!/usr/bin/env python3
"""Write the ONNX test fixtures for herd's serving tests.

Usage:
    .venv/bin/python scripts/make_fixtures.py OUT_DIR [--big-mb 16] [--big-mb 32 ...]

(The venv is built by scripts/test-python.sh; it needs numpy, onnx and onnxruntime.)

Writes a Triton-style model repository, deterministically (same bytes on every run), in ~2 s:

    OUT_DIR/<model>/1/model.onnx
    OUT_DIR/references.json

Models (names are lower case):
    dtype_fp32 dtype_fp64 dtype_int8 dtype_int16 dtype_int32 dtype_int64
    dtype_uint8 dtype_uint16 dtype_uint32 dtype_uint64 dtype_bool
                     input "x" [-1, 4] of that type -> output "y" of the same type:
                     y = x + 1 where onnxruntime's CPU kernels implement Add for the type,
                     y = Identity(x) where they do not, y = Not(x) for BOOL
                     (references.json says which op each model uses).
    bytes_echo       input "x" STRING [-1] -> Identity -> output "y" STRING [-1]
    fixed_shape      input "x" FP32 [2, 3] (no dynamic dims) -> output "y" = x * 2
    corrupt          model.onnx holds 4096 random bytes: loading must fail
    unsupported_op   a valid ONNX file whose only node is "HerdNoSuchOp" from the custom
                     domain "com.herd.test", which onnxruntime cannot run: loading must fail
    big_<n>          input "x" INT64 [-1] (row indices) -> Gather(W, x) -> output "y" FP32
                     [-1, 64], where W is a FP32 [n * 16384, 64] initializer of n MiB; the
                     output depends on the input, so onnxruntime cannot constant-fold W away.
                     Default n = 16; repeat --big-mb for more sizes.

references.json:
    {"onnxruntime": "<version>", "onnx": "<version>", "skipped": {model: reason},
     "models": {model: {"op": ..., "load_error": bool,
                        "signature": {"inputs": [{name, datatype, shape}], "outputs": [...]},
                        "inputs": [{name, datatype, shape, data}],     # KServe v2 JSON tensors
                        "outputs": [{name, datatype, shape, data}]}}}  # what onnxruntime returned
    `data` is flat row-major; BYTES data are UTF-8 strings. Models that must fail to load have
    "load_error": true and no inputs/outputs. Every onnxruntime output is also checked here
    against numpy before it is written.
"""

import argparse
import json
import os
import random
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 14  # Add accepts every integer type from opset 14

# v2 name -> (ONNX element type, numpy dtype)
DTYPES = {
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "BOOL": (TensorProto.BOOL, np.bool_),
}
ONNX_TO_V2 = {v[0]: k for k, v in DTYPES.items()}
ONNX_TO_V2[TensorProto.STRING] = "BYTES"


def make_model(graph, opsets=None):
    model = helper.make_model(
        graph,
        producer_name="herd-fixtures",
        opset_imports=opsets or [helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    return model


def save(out_dir, name, model_or_bytes):
    d = os.path.join(out_dir, name, "1")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
    return path


def session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the failures we provoke are expected; keep stderr quiet
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def v2_tensor(name, arr, datatype):
    if datatype == "BYTES":
        data = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    elif datatype == "BOOL":
        data = [bool(v) for v in arr.reshape(-1)]
    elif datatype in ("FP32", "FP64"):
        data = [float(v) for v in arr.reshape(-1)]
    else:
        data = [int(v) for v in arr.reshape(-1)]
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def signature(model):
    def meta(v):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": v.name, "datatype": ONNX_TO_V2[t.elem_type], "shape": shape}

    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": [meta(v) for v in model.graph.input if v.name not in inits],
        "outputs": [meta(v) for v in model.graph.output],
    }


def run_and_check(path, model, feeds, expected, datatypes):
    """Runs onnxruntime, checks its outputs equal numpy's `expected`, returns the reference."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(names, feeds)
    for name, g, e in zip(names, got, expected):
        if g.dtype != e.dtype or g.shape != e.shape:
            sys.exit(f"{path}: output {name} is {g.dtype}{g.shape}, numpy says {e.dtype}{e.shape}")
        if e.dtype.kind == "f":
            ok = np.allclose(g, e, rtol=0, atol=1e-6)
        else:
            ok = np.array_equal(g, e)
        if not ok:
            sys.exit(f"{path}: onnxruntime output {name} differs from numpy")
    return {
        "signature": signature(model),
        "inputs": [v2_tensor(k, v, datatypes[k]) for k, v in feeds.items()],
        "outputs": [v2_tensor(n, g, datatypes[n]) for n, g in zip(names, got)],
    }


def sample_input(v2, np_dtype):
    if v2 == "BOOL":
        return np.array([[True, False, True, True], [False, False, True, False]])
    if v2 in ("FP32", "FP64"):
        # dyadic values: exact in binary, so JSON round-trips them exactly
        vals = [0.5, -1.25, 3.0, 0.0, -0.75, 100.5, 2.25, -8.0]
    elif v2.startswith("UINT"):
        vals = [0, 1, 2, 7, 10, 42, 100, 126]
    else:
        vals = [0, -1, 2, -7, 10, -42, 100, -126]
    return np.array(vals, dtype=np_dtype).reshape(2, 4)


def dtype_model(out_dir, v2):
    onnx_t, np_dtype = DTYPES[v2]
    name = f"dtype_{v2.lower()}"
    x = helper.make_tensor_value_info("x", onnx_t, ["N", 4])
    y = helper.make_tensor_value_info("y", onnx_t, ["N", 4])
    feed = sample_input(v2, np_dtype)
    if v2 == "BOOL":
        candidates = [("Not", np.logical_not(feed))]
    else:
        candidates = [("Add", feed + np.array(1, dtype=np_dtype)), ("Identity", feed.copy())]
    for op, expected in candidates:
        inits = []
        if op == "Add":
            inits = [numpy_helper.from_array(np.array([1], dtype=np_dtype), "one")]
            node = helper.make_node("Add", ["x", "one"], ["y"])
        else:
            node = helper.make_node(op, ["x"], ["y"])
        model = make_model(helper.make_graph([node], name, [x], [y], inits))
        onnx.checker.check_model(model, full_check=True)
        path = save(out_dir, name, model)
        try:
            session(path)
        except Exception:  # noqa: BLE001 - no CPU kernel for this type: try the next op
            print(f"{name}: onnxruntime has no CPU {op} for {v2}; using the next op")
            continue
        ref = run_and_check(path, model, {"x": feed}, [expected], {"x": v2, "y": v2})
        return name, {"op": op, "load_error": False, **ref}
    sys.exit(f"{name}: onnxruntime runs none of {[c[0] for c in candidates]}")


def bytes_echo(out_dir, refs, skipped):
    name = "bytes_echo"
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])
    model = make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y]))
    onnx.checker.check_model(model, full_check=True)
    path = save(out_dir, name, model)
    feed = np.array(["hello", "", "grüße, 世界", "a longer sentence with spaces"], dtype=object)
    try:
        ref = run_and_check(path, model, {"x": feed}, [feed], {"x": "BYTES", "y": "BYTES"})
    except Exception as e:  # noqa: BLE001
        skipped[name] = f"onnxruntime {ort.__version__} cannot run STRING Identity: {e}"
        return
    refs[name] = {"op": "Identity", "load_error": False, **ref}


def fixed_shape(out_dir, refs):
    name = "fixed_shape"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    node = helper.make_node("Mul", ["x", "two"], ["y"])
    model = make_model(helper.make_graph([node], name, [x], [y], [two]))
    onnx.checker.check_model(model, full_check=True)
    path = save(out_dir, name, model)
    feed = np.array([[1.0, -2.5, 0.25], [4.0, 0.0, -0.125]], dtype=np.float32)
    ref = run_and_check(path, model, {"x": feed}, [feed * 2], {"x": "FP32", "y": "FP32"})
    refs[name] = {"op": "Mul", "load_error": False, **ref}


def expect_load_failure(path, name):
    try:
        session(path)
    except Exception as e:  # noqa: BLE001 - any load failure is what we want
        # without the path, so references.json is the same wherever it was written
        return str(e).replace(path, "<model.onnx>").splitlines()[0][:300]
    sys.exit(f"{name}: onnxruntime loaded it, but it must fail to load")


def corrupt(out_dir, refs):
    name = "corrupt"
    data = random.Random(20240607).randbytes(4096)
    path = save(out_dir, name, data)
    err = expect_load_failure(path, name)
    refs[name] = {"op": None, "load_error": True, "onnxruntime_error": err}


def unsupported_op(out_dir, refs):
    name = "unsupported_op"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("HerdNoSuchOp", ["x"], ["y"], domain="com.herd.test")
    model = make_model(
        helper.make_graph([node], name, [x], [y]),
        opsets=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.herd.test", 1)],
    )
    onnx.checker.check_model(model)  # structurally valid; the op is simply unknown
    path = save(out_dir, name, model)
    err = expect_load_failure(path, name)
    refs[name] = {
        "op": "com.herd.test.HerdNoSuchOp",
        "load_error": True,
        "onnxruntime_error": err,
        "signature": signature(model),
    }


def big(out_dir, refs, mib):
    name = f"big_{mib}"
    cols = 64
    rows = mib * 1024 * 1024 // (4 * cols)
    w = np.random.default_rng(mib).standard_normal((rows, cols), dtype=np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])
    node = helper.make_node("Gather", ["W", "x"], ["y"], axis=0)
    model = make_model(helper.make_graph([node], name, [x], [y], [numpy_helper.from_array(w, "W")]))
    onnx.checker.check_model(model)
    path = save(out_dir, name, model)
    feed = np.array([0, rows - 1, 12345 % rows], dtype=np.int64)
    ref = run_and_check(path, model, {"x": feed}, [w[feed]], {"x": "INT64", "y": "FP32"})
    refs[name] = {
        "op": "Gather",
        "load_error": False,
        "initializer_bytes": int(w.nbytes),
        "file_bytes": os.path.getsize(path),
        **ref,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="directory to write the model repository into (created)")
    p.add_argument(
        "--big-mb",
        type=int,
        action="append",
        help="size in MiB of a big_<n> model's initializer; repeat for several (default 16)",
    )
    args = p.parse_args()
    sizes = args.big_mb or [16]
    if any(s < 1 or s > 4096 for s in sizes):
        p.error("--big-mb must be between 1 and 4096")

    os.makedirs(args.out_dir, exist_ok=True)
    refs, skipped = {}, {}
    for v2 in DTYPES:
        name, ref = dtype_model(args.out_dir, v2)
        refs[name] = ref
    bytes_echo(args.out_dir, refs, skipped)
    fixed_shape(args.out_dir, refs)
    corrupt(args.out_dir, refs)
    unsupported_op(args.out_dir, refs)
    for mib in sizes:
        big(args.out_dir, refs, mib)

    out = {
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "skipped": skipped,
        "models": refs,
    }
    with open(os.path.join(args.out_dir, "references.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    for name, ref in refs.items():
        print(f"{name:16} {ref['op'] or '-':28} {'load must fail' if ref['load_error'] else 'ok'}")
    for name, why in skipped.items():
        print(f"{name:16} SKIPPED: {why}")


if __name__ == "__main__":
    main()
