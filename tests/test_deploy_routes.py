"""The deploy route table: one record per runtime that every dispatch point reads, and the options it refuses.

Every route's named steps resolve to functions of the modules that own them; every export option a route
does not take is refused by name (flag and route) before anything is built; the vocabularies the command
line offers are the table's; ``leanvit quantize`` flags come from :class:`QuantizeOptions` without torch.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import leanvit.deploy.quantize as quantize_mod
import leanvit.deploy.runtime as runtime_mod
import leanvit.deploy.writers as writers_mod
from leanvit.cli import build_parser, main
from leanvit.deploy.capabilities import check_precision, require_backend
from leanvit.deploy.export import export_model, export_segmentor
from leanvit.deploy.options import ExportOptions, QuantizeOptions, check_route_options
from leanvit.deploy.routes import (
    BACKENDS, CALIBRATION_IMAGES, DENSE_EXPORT_OPTIONS, DENSE_FORMATS, FORMATS, INT8_RUNTIMES, ROUTES, SCHEMES,
    backend_route, format_route, int8_route, suffix_route, target_for,
)
from leanvit.errors import InvalidValueError
from leanvit.models.fusion import TARGETS

# A value away from the default for every ExportOptions field (what a user passing the flag sets).
CHANGED = dict(checkpoint=Path("w.pth"), img_size=64, batch_size=2, dynamic_batch=True, precision="fp32",
               calibration=Path("calib"), calibration_images=8, target_cpu="no-vnni", dynamo=True, opset=18, verify=False, threads=2,
               seed=1)


def _flag(name: str) -> str:
    field = next(f for f in dataclasses.fields(ExportOptions) if f.name == name)
    return field.metadata.get("flag") or "--" + name.replace("_", "-")


def test_every_option_field_has_a_changed_value() -> None:
    assert set(CHANGED) == {f.name for f in dataclasses.fields(ExportOptions)}
    assert all(CHANGED[f.name] != f.default for f in dataclasses.fields(ExportOptions))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_inapplicable_option_is_refused_naming_flag_and_route(tmp_path, fmt: str) -> None:
    route = format_route(fmt)
    output = tmp_path / f"m{route.suffixes[0]}"
    refused = [f.name for f in dataclasses.fields(ExportOptions) if f.name not in route.export_options]
    for name in refused:
        with pytest.raises(InvalidValueError) as info:
            export_model("efficientvit_m0", fmt, output, **{name: CHANGED[name]})
        message = str(info.value)
        assert message.startswith(f"{_flag(name)} do(es) not apply to the {fmt} export route"), message
    for name in route.export_options:  # and the ones it takes pass the table check
        check_route_options(ExportOptions(**{name: CHANGED[name]}), route)
    assert not list(tmp_path.iterdir())
    # the table says what each route takes: ONNX alone has the exporter switches, mobile programs a static batch
    assert ("opset" in refused) == (fmt != "onnx") and ("dynamo" in refused) == (fmt != "onnx")
    assert ("dynamic_batch" in refused) == (fmt in ("executorch", "coreml"))
    assert ("calibration" in refused) == ("int8" not in route.precisions)


def test_segmentation_export_takes_only_its_options(tmp_path) -> None:
    assert DENSE_FORMATS == ("onnx", "openvino")
    for name, value in CHANGED.items():
        options = ExportOptions(**{name: value})
        if name in DENSE_EXPORT_OPTIONS:
            check_route_options(options, format_route("onnx"), dense=True)
            continue
        with pytest.raises(InvalidValueError, match=f"^{_flag(name)} do\\(es\\) not apply to a segmentation "
                                                    "checkpoint \\(onnx export"):
            check_route_options(options, format_route("onnx"), dense=True)
    with pytest.raises(InvalidValueError, match="segmentors export to onnx or openvino, not torchscript"):
        export_segmentor(None, tmp_path / "m.pt", "torchscript")  # type: ignore[arg-type]


def test_calibration_flags_need_int8(tmp_path) -> None:
    with pytest.raises(InvalidValueError, match="--calibration calibrate"):
        export_model("efficientvit_m0", "onnx", tmp_path / "m.onnx", calibration=tmp_path)
    assert not list(tmp_path.iterdir())


def test_named_steps_resolve_in_their_modules() -> None:
    owners = {"writer": writers_mod, "builder": runtime_mod, "loader": runtime_mod, "quantizer": quantize_mod}
    for route in ROUTES:
        assert route.fuse_target in TARGETS, route
        for step, module in owners.items():
            name = getattr(route, step)
            if name is not None:
                assert callable(getattr(module, name, None)), f"{route.name}.{step} = {name!r} not in {module.__name__}"
        if route.format:
            assert route.writer and route.suffixes and route.precisions, route
            assert suffix_route(route.suffixes[0]) is route
        if route.int8:
            assert route.quantizer and route.int8_suffix and suffix_route(route.int8_suffix) is route
        if route.backend:
            assert route.builder
    assert suffix_route(".tflite") is None


def test_vocabularies_are_the_tables() -> None:
    # the command line's choices, in the order (and with the names) it always had
    assert set(BACKENDS) == {"eager", "jit", "compile", "onnxruntime", "openvino", "executorch"}
    assert set(FORMATS) == {"onnx", "openvino", "torchscript", "executorch", "coreml"}
    assert INT8_RUNTIMES == ("openvino", "onnxruntime", "executorch", "pytorch")
    assert backend_route("compile").int8 == "pytorch" and int8_route("pytorch").backend == "compile"
    assert format_route("onnx") is backend_route("onnxruntime") is int8_route("onnxruntime")
    assert [target_for(n) for n in ("onnx", "onnxruntime", "openvino", "executorch", "coreml", "jit", "pytorch")] == [
        "onnx", "onnx", "openvino", "executorch", "coreml", "torch", "torch"]
    for bad, lookup in (("tensorrt", backend_route), ("tflite", format_route), ("tensorrt", int8_route)):
        with pytest.raises(InvalidValueError, match=f"unknown .*'{bad}'; choose from"):
            lookup(bad)
    with pytest.raises(InvalidValueError, match="unknown backend 'tensorrt'"):
        require_backend("tensorrt")


def test_capabilities_read_the_table() -> None:
    with pytest.raises(InvalidValueError, match="the executorch backend runs on CPU only"):
        check_precision("fp32", "executorch", device="cuda")
    with pytest.raises(InvalidValueError, match="int8 runs as a quantised artifact on CPU, in the openvino, "
                                                "onnxruntime, executorch, compile backends"):
        check_precision("int8", "eager")
    with pytest.raises(InvalidValueError, match="the executorch backend runs the fp32 graph"):
        check_precision("bf16", "executorch")


def test_writer_refuses_options_its_route_does_not_take(tmp_path) -> None:
    with pytest.raises(InvalidValueError, match="dynamic_batch do\\(es\\) not apply to the executorch writer"):
        writers_mod.write_artifact("executorch", None, None, tmp_path / "m.pte", dynamic_batch=True)
    with pytest.raises(InvalidValueError, match="opset do\\(es\\) not apply to the torchscript writer"):
        writers_mod.write_artifact("torchscript", None, None, tmp_path / "m.pt", opset=18)
    assert not list(tmp_path.iterdir())


def test_unknown_artifact_suffix_lists_the_tables() -> None:
    with pytest.raises(InvalidValueError, match=r"cannot tell the format of m\.tflite: expected one of .*\.pte.*\.xml"):
        runtime_mod.load_artifact("m.tflite")
    with pytest.raises(InvalidValueError, match="Core ML runs it on macOS"):
        runtime_mod.load_artifact("m.mlpackage")


# --- leanvit quantize: flags from QuantizeOptions ------------------------------------------------------------------
def test_quantize_flags_come_from_the_options_without_torch() -> None:
    code = ("import sys; from leanvit.cli import build_parser; build_parser('quantize').parse_args("
            "['quantize', 'm', '--calibration', 'c', '--out', 'o']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    parser = build_parser("quantize")
    args = parser.parse_args(["quantize", "m", "--calibration", "c", "--out", "o"])
    # every flag the command had, with its default
    expected = dict(checkpoint=None, calibration=Path("c"), val=None, out=Path("o"), runtime=INT8_RUNTIMES,
                    scheme="default", img_size=None, calibration_images=CALIBRATION_IMAGES, val_images=None,
                    max_drop=None, tune=None, tune_images=None, eager=False)
    assert {k: getattr(args, k) for k in expected} == expected and args.json is False
    assert set(expected) <= {f.name for f in dataclasses.fields(QuantizeOptions)}  # additions allowed
    args = parser.parse_args(["quantize", "m", "--calibration", "c", "--out", "o", "--runtime", "onnxruntime",
                              "pytorch", "--scheme", "weights", "--img-size", "32", "--calibration-images", "8",
                              "--val", "v", "--val-images", "4", "--max-drop", "0.5", "--tune", "t",
                              "--tune-images", "6", "--checkpoint", "w.pth", "--eager", "--json"])
    assert (args.runtime, args.scheme, args.img_size, args.calibration_images, args.val, args.val_images,
            args.max_drop, args.tune, args.tune_images, args.checkpoint, args.eager, args.json) == (
        ["onnxruntime", "pytorch"], "weights", 32, 8, Path("v"), 4, 0.5, Path("t"), 6, Path("w.pth"), True, True)
    assert SCHEMES == ("default", "weights")
    for bad in (["--runtime", "tensorrt"], ["--scheme", "int4"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["quantize", "m", "--calibration", "c", "--out", "o", *bad])
    with pytest.raises(SystemExit):  # --calibration and --out stay required
        parser.parse_args(["quantize", "m", "--out", "o"])


def test_export_format_choices_are_the_tables(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser("export").parse_args(["export", "m", "--format", "tflite", "--output", "m.tflite"])
    err = capsys.readouterr().err
    assert all(repr(f) in err for f in FORMATS), err
    assert main(["export", "efficientvit_m0", "--format", "executorch", "--output", "m.pte", "--dynamic-batch"]) == 1
    assert "--dynamic-batch do(es) not apply to the executorch export route" in capsys.readouterr().err
