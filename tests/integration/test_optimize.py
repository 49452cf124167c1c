"""`edgecls optimize`: pruning reaches its target, QAT converts to int8, PQAT keeps the zeros."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest

from conftest import finetune_tiny, run_cli
from edgecls.run import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished fine-tuning run of MobileNet v1 0.25 at 32 px on generated images (frozen, 1 epoch)."""
    return finetune_tiny(tmp_path_factory.mktemp("optimize"), train=16, test=4, **{"train.strategy": "frozen", "train.epochs": 1})


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(tiny_run, target)
    return target


def int8_tflite(model) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def int8_weight_sparsity(flatbuffer: bytes) -> tuple[float, set]:
    """Zero fraction over the weights of every CONV_2D and FULLY_CONNECTED op, and the I/O dtypes."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()
    zeros = total = 0
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            weights = interpreter.get_tensor(op["inputs"][1])
            assert weights.dtype == np.int8
            zeros += int(np.sum(weights == 0))
            total += weights.size
    dtypes = {interpreter.get_input_details()[0]["dtype"], interpreter.get_output_details()[0]["dtype"]}
    return zeros / total, dtypes


def test_prune_then_pqat(run_copy, capsys):
    import tf_keras

    from edgecls.optimize import load_stage_model

    code, out, err = run_cli(["optimize", run_copy, "--prune", "0.5", "--qat", "--epochs", "1"], capsys)
    assert code == 0, err
    run = RunDir(run_copy)
    prune = json.loads(run.file("prune/metrics.json").read_text())
    assert prune["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert all(v == pytest.approx(0.5, abs=0.02) for v in prune["sparsity_per_layer"].values())
    assert prune["dense_sparsity"] < 0.01
    assert prune["gzip_bytes"] < 0.8 * prune["gzip_bytes_dense"]
    assert {"test_accuracy", "per_class_accuracy", "confusion_matrix", "num_test_images"} <= set(prune)

    pruned, _ = load_stage_model(run, "prune")
    assert not [layer for layer in pruned.layers if "PruneLowMagnitude" in type(layer).__name__]
    assert not any(isinstance(layer, tf_keras.Model) for layer in pruned.layers)

    pqat = json.loads(run.file("pqat/metrics.json").read_text())
    assert pqat["parent"] == "prune" and pqat["sparsity_preserved"] is True
    finished = {stage: dt.datetime.fromisoformat(run.stage(stage)["finished"]) for stage in ("finetune", "prune", "pqat")}
    assert 0 < prune["train_seconds"] < (finished["prune"] - finished["finetune"]).total_seconds()  # its epoch, not the eval
    assert 0 < pqat["train_seconds"] < (finished["pqat"] - finished["prune"]).total_seconds()
    assert pqat["sparsity"] == pytest.approx(prune["sparsity"], abs=0.01)
    model, _ = load_stage_model(run, "pqat")
    sparsity, dtypes = int8_weight_sparsity(int8_tflite(model))
    assert sparsity == pytest.approx(prune["sparsity"], abs=0.01), "zeros must survive int8"
    assert dtypes == {np.int8}


def test_qat_alone_converts_to_int8(run_copy, capsys):
    from edgecls.optimize import load_stage_model

    code, out, err = run_cli(["optimize", run_copy, "--qat", "--epochs", "1"], capsys)
    assert code == 0, err
    model, entry = load_stage_model(RunDir(run_copy), "qat")
    assert entry["inputs"]["parent"] == "finetune"
    assert any("Quantize" in type(layer).__name__ for layer in model.layers)
    _, dtypes = int8_weight_sparsity(int8_tflite(model))
    assert dtypes == {np.int8}

    code, out, err = run_cli(["optimize", run_copy, "--qat"], capsys)
    assert code == 2 and "QAT asked for twice" in err and len(err.strip().splitlines()) == 1

    from edgecls.config import ExportConfig
    from edgecls.export import run_export
    from edgecls.runtimes import open_runner, predict

    entry = run_export(run_copy, ExportConfig(stage="qat", precisions=("int8",), check_per_class=4))
    rows = {row["file"]: row for row in entry["metrics"]["artifacts"]}
    assert entry["metrics"]["calibration"] is None  # learned ranges, no calibration set
    folder = run_copy / "export" / "qat"
    images = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    tflite_scores = predict(open_runner(folder / "model_int8.tflite"), images)
    onnx_scores = predict(open_runner(folder / "model_int8.onnx"), images)
    assert np.abs(tflite_scores - onnx_scores).max() <= 0.05  # the same quantized model: at most a rounding step apart
    assert rows["model_int8.onnx"]["int8_initializers"] >= 14


def test_structured_2_4(run_copy, capsys):
    from edgecls.optimize import load_stage_model

    code, out, err = run_cli(["optimize", run_copy, "--structured-2-4", "--epochs", "1"], capsys)
    assert code == 0, err
    model, _ = load_stage_model(RunDir(run_copy), "prune")
    kernel = model.get_layer("conv_pw_7").kernel.numpy()  # [1, 1, in, out]
    groups = (kernel.reshape(-1, kernel.shape[-1]).T.reshape(kernel.shape[-1], -1, 4) != 0).sum(axis=2)
    assert groups.max() <= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prune", "1.5"], "`--prune` must be a sparsity in (0, 1); got 1.5."),
        (["--prune", "0"], "`--prune` must be a sparsity in (0, 1); got 0.0."),
        ([], "nothing to do: pass `--prune SPARSITY`, `--prune-channels SHARE`, `--fit PROFILE` and/or `--qat`."),
        (["--prune", "0.3", "--structured-2-4"], "`--prune` must be 0.5 with 2:4"),
        (["--prune", "0.5", "--prune-layers", "depthwise"], "`--prune-layers` must be"),
        (["--qat", "--granularity", "per-row"], "`--granularity` must be one of per-channel, per-tensor"),
        (["--qat-from", "channels"], "`--qat-from` must be left at `auto` unless `optimize.qat` is on"),
        (["--prune", "0.5", "--qat", "--qat-from", "channels"], "`--qat-from` must be `prune` or `auto` when this call"),
        (["--qat", "--qat-from", "channels"], "has no finished `channels` stage; run `edgecls optimize` first."),
    ],
)
def test_bad_options(run_copy, capsys, args, message):
    code, out, err = run_cli(["optimize", run_copy, *args], capsys)
    assert code == 2, err
    assert err.startswith("edgecls: error: ") and len(err.strip().splitlines()) == 1
    assert message in err
    assert not (run_copy / "prune").exists()


def test_run_without_model(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    code, out, err = run_cli(["optimize", tmp_path / "half", "--prune", "0.5"], capsys)
    assert code == 2 and "has no finished `finetune` stage" in err
    (tmp_path / "half" / "config.yaml").write_text("{}")
    RunDir(tmp_path / "gone").path.mkdir()
    code, out, err = run_cli(["optimize", tmp_path / "missing", "--qat"], capsys)
    assert code == 2 and "does not exist" in err


def test_unsupported_layers_are_named(tmp_path):
    from edgecls.errors import ConfigError
    from edgecls.models import create_model
    from edgecls.optimize import apply_qat, unsupported_for_qat

    model, _ = create_model("mobilenet_v3_small", input_size=32, weights="none")
    unsupported = unsupported_for_qat(model)
    assert {kind for _, kind in unsupported} == {"TFOpLambda", "Multiply"}
    with pytest.raises(ConfigError, match=r"layer `tf\.__operators__\.add.*` \(TFOpLambda\) cannot be quantization"):
        apply_qat(model)
    quantized = apply_qat(model, skip_unsupported=True)
    assert any("Quantize" in type(layer).__name__ for layer in quantized.layers)


@pytest.mark.parametrize(("name", "alpha"), [("mobilenet", 0.25), ("mobilenet_v2", 0.35), ("resnet50", None)])
def test_fold_batchnorm_is_exact(name, alpha):
    """Folding inference-mode BatchNorm into the convolutions changes no output, for every graph shape."""
    import tf_keras

    from edgecls.models import create_model
    from edgecls.optimize.per_tensor import fold_batchnorm

    model, _ = create_model(name, input_size=32, alpha=alpha, weights="none")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):  # statistics far from the identity
            layer.set_weights([rng.uniform(0.5, 2.0, w.shape).astype(np.float32) for w in layer.get_weights()])
    folded = fold_batchnorm(model)
    assert not [layer for layer in folded.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    assert len(folded.layers) < len(model.layers)
    images = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    logits = [tf_keras.Model(m.input, m.layers[-1].input)(images).numpy() for m in (model, folded)]
    assert np.abs(logits[0] - logits[1]).max() <= 1e-4 * max(1.0, np.abs(logits[0]).max())


def test_per_tensor_qat_exports_per_tensor_int8(run_copy, capsys):
    """`--granularity per-tensor`: BatchNorm folded, one scale per int8 weight tensor, and the choice is the stage's."""
    import tf_keras

    from edgecls.optimize import load_stage_model

    code, out, err = run_cli(["optimize", run_copy, "--qat", "--epochs", "1", "--granularity", "per-tensor"], capsys)
    assert code == 0, err
    model, entry = load_stage_model(RunDir(run_copy), "qat")
    assert entry["metrics"]["granularity"] == "per-tensor"
    assert not [layer for layer in model.layers if isinstance(getattr(layer, "layer", layer), tf_keras.layers.BatchNormalization)]

    code, out, err = run_cli(["export", run_copy, "--int8", "--format", "tflite"], capsys)
    assert code == 0, err
    summary = json.loads((run_copy / "export/qat/export.json").read_text())
    int8 = {row["file"]: row for row in summary["artifacts"]}["model_int8.tflite"]
    assert summary["granularity"] == "per-tensor"
    assert (int8["weight_granularity"], int8["weight_dtypes"], int8["input_dtype"]) == ("per-tensor", ["int8"], "int8")

    before = (run_copy / "export/qat/export.json").read_bytes()
    code, out, err = run_cli(["export", run_copy, "--int8", "--granularity", "per-channel", "--force"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "was quantization-aware trained with per-tensor weights" in err
    assert (run_copy / "export/qat/export.json").read_bytes() == before, "the earlier export is untouched"


def test_per_tensor_pqat_keeps_zeros(run_copy, capsys):
    """Prune-preserving QAT with per-tensor weights (TFMOT's registry only knows per-channel Conv2D)."""
    code, out, err = run_cli(
        ["optimize", run_copy, "--prune", "0.5", "--qat", "--epochs", "1", "--granularity", "per-tensor"], capsys
    )
    assert code == 0, err
    from edgecls.optimize import load_stage_model

    model, entry = load_stage_model(RunDir(run_copy), "pqat")
    assert entry["metrics"]["sparsity_preserved"] is True
    sparsity, dtypes = int8_weight_sparsity(int8_tflite(model))
    assert sparsity == pytest.approx(0.5, abs=0.02) and dtypes == {np.int8}


def test_channel_pruned_stage_goes_through_qat_export_and_firmware(run_copy, capsys):
    """`--prune-channels 0.5 --qat` writes `channels` then `cqat`; both export, and the int8 file builds firmware."""
    args = ["optimize", run_copy, "--prune-channels", "0.5", "--qat", "--epochs", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, out + err
    run = RunDir(run_copy)
    channels, cqat = run.stage("channels"), run.stage("cqat")
    assert cqat["inputs"]["parent"] == "channels"
    assert cqat["inputs"]["parent_sha256"] == run.model_sha256("channels")
    widths = json.loads((run_copy / "channels/metrics.json").read_text())["widths"]
    assert widths["conv_pw_13"] == [256, 128] and widths["conv_pw_1"] == [16, 8]
    assert widths["conv1"] == [8, 4], "widths are multiples of 4 (the default): the 8-channel stem keeps 4"
    assert all(after % 4 == 0 for _, after in widths.values())
    assert channels["metrics"]["macs"] < 0.35 * channels["metrics"]["macs_before"]
    model = run.load_model("cqat")[0]
    assert model.count_params() < 0.4 * run.load_model("finetune")[0].count_params()

    args = ["export", run_copy, "--int8", "--format", "tflite", "--set", "export.calibration_samples=12"]
    code, out, err = run_cli(args, capsys)  # the most optimized stage: cqat
    assert code == 0, out + err
    rows = {r["file"]: r for r in json.loads((run_copy / "export/cqat/export.json").read_text())["artifacts"]}
    assert rows["model_int8.tflite"]["check_agreement"] >= 0.8 and rows["model_int8.tflite"]["weight_dtypes"] == ["int8"]
    full = rows["model_fp32.tflite"]["bytes"]
    code, out, err = run_cli(["firmware", run_copy], capsys)  # the most optimized export: cqat
    assert code == 0, out + err
    assert (run_copy / "firmware/cqat").is_dir() and full > rows["model_int8.tflite"]["bytes"]


def test_qat_from_continues_the_channels_stage_an_earlier_call_wrote(run_copy, capsys):
    """`--prune-channels` then, in a second call, `--qat --qat-from channels`: QAT of that very model, not of finetune."""
    code, out, err = run_cli(["optimize", run_copy, "--prune-channels", "0.5", "--epochs", "1"], capsys)
    assert code == 0, out + err
    run = RunDir(run_copy)
    channels_sha = run.model_sha256("channels")
    code, out, err = run_cli(["optimize", run_copy, "--qat", "--qat-from", "channels", "--epochs", "1"], capsys)
    assert code == 0, out + err
    assert run.stage("qat") is None and run.model_sha256("channels") == channels_sha, "channels is left as it was"
    cqat = run.stage("cqat")
    assert cqat["inputs"]["parent"] == "channels" and cqat["inputs"]["parent_sha256"] == channels_sha
    widths = [layer.output_shape[-1] for layer in run.load_model("cqat")[0].layers if layer.name.endswith("conv_pw_13")]
    assert widths == [128], "QAT trained the 50 % thinner model (conv_pw_13: 256 -> 128 channels)"


@pytest.mark.parametrize(
    ("profile_text", "messages"),
    [
        ("name: tiny-mcu\nkind: mcu\nflash_bytes: 20000\nram_bytes: 8192\n",
         ["no model fits `tiny-mcu`: even with 70% of the channels removed"]),
        ("name: tiny-linux\nkind: linux\nmax_p50_ms: 0.0001\n",  # a latency no model meets
         ["no model fits `tiny-linux`: even with 70% of the channels removed at 32 px, p50 ", "ms > 0.0001 ms"]),
    ],
)  # fmt: skip
def test_fit_rejects_an_impossible_budget_before_training(run_copy, tmp_path, capsys, profile_text, messages):
    from conftest import assert_one_error, snapshot

    profile = tmp_path / "impossible.yaml"
    profile.write_text(profile_text)
    before = snapshot(run_copy)
    code, out, err = run_cli(["optimize", run_copy, "--fit", profile, "--epochs", "1"], capsys)
    assert_one_error(code, err, 1, messages[0])
    assert all(message in err for message in messages[1:]) and snapshot(run_copy) == before


def test_fit_chooses_a_fitting_share_by_validation_accuracy(run_copy, tmp_path, capsys):
    """A Linux model-file budget of 60 % of the unpruned int8 file: 0-20 % removed cannot fit, 30 % and more can.

    Latency and memory budgets far above any measurement: every candidate is timed, none rejected for it.
    """
    from edgecls.optimize import fit

    model = RunDir(run_copy).load_model("finetune")[0]
    full = len(fit.throwaway_int8(model))
    flash = int(0.6 * full) + fit.METADATA_ALLOWANCE
    profile = tmp_path / "small-linux.yaml"
    profile.write_text(f"name: small-linux\nkind: linux\nmax_model_bytes: {flash}\nmax_p50_ms: 1000\nmax_ram_mib: 100000\n")
    args = ["optimize", run_copy, "--fit", profile, "--epochs", "1", "--set", "optimize.fit_trials=1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, out + err
    report = json.loads((run_copy / "fit/small-linux/fit.json").read_text())
    candidates = {c["ratio"]: c for c in report["candidates"]}
    assert len(candidates) == 8
    assert [r for r, c in candidates.items() if not c["trained"] and c["fits"]] == [0.3, 0.4, 0.5, 0.6, 0.7][len(trained := [
        r for r, c in candidates.items() if c["trained"]]):]  # fmt: skip
    assert all("for the model file" in c["why_not"] for c in candidates.values() if not c["fits"])
    assert all(0 < c["p50_ms"] < 1000 and c["peak_rss_mib"] > 10 and c["arena_bytes"] == 0 for c in candidates.values())
    assert "Budgets: model file" in (run_copy / "fit/small-linux/fit.md").read_text()
    kept = [r for r in trained if candidates[r]["fits"]]
    assert trained == [0.3, 0.4, 0.5, 0.6, 0.7][: len(trained)] and kept == trained[-1:]  # most MACs first, until one fits
    assert all(candidates[r]["why_not"].startswith("after training") for r in trained if r not in kept)
    (chosen,) = [r for r, c in candidates.items() if c["chosen"]]
    assert candidates[chosen]["val_accuracy"] == max(candidates[r]["val_accuracy"] for r in kept)
    channels = RunDir(run_copy).stage("channels")
    assert channels["metrics"]["prune_channels"] == chosen
    code, out, err = run_cli(["export", run_copy, "--int8", "--format", "tflite", "--set", "export.calibration_samples=12"], capsys)
    assert code == 0, out + err
    assert (run_copy / "export/channels/model_int8.tflite").stat().st_size <= flash


def test_fit_measures_the_other_imagenet_widths_and_names_the_widest_that_fits():
    """Alpha 0.5 fits a 1.2 MB flash budget, 0.75 and 1.0 have more parameters than bytes (rejected unconverted);
    the table gives the command that fine-tunes the widest fitting width when it has more MACs than the chosen model."""
    import tf_keras

    from edgecls.devices import DeviceProfile
    from edgecls.optimize import fit

    flash = 1_200_000
    budget = fit.Budget.of(DeviceProfile(name="flash-mcu", kind="mcu", flash_bytes=flash, ram_bytes=1 << 30),
                           flash_reserve=0, ram_reserve=0, arena_margin=0.1)  # fmt: skip
    assert fit.other_widths("mobilenet", 0.25) == (0.5, 0.75, 1.0)
    widths = fit.measure_widths("mobilenet", (0.5, 0.75, 1.0), [32], 10, budget)
    params = {a: tf_keras.applications.MobileNet((32, 32, 3), alpha=a, include_top=False, weights=None).count_params()
              + int(1024 * a) * 10 + 10 for a in (0.5, 0.75, 1.0)}  # fmt: skip
    assert {c.alpha: c.params for c in widths} == params
    half, three_quarters, full = widths
    assert half.fits and params[0.5] < half.int8_bytes < 1.2 * params[0.5] and half.arena_bytes > 32 * 32 * 3
    assert not three_quarters.fits and not full.fits and three_quarters.int8_bytes == full.int8_bytes == 0
    assert all("parameters >" in c.why_not for c in (three_quarters, full))
    assert half.macs < three_quarters.macs < full.macs and not any(c.trained for c in widths)
    chosen = fit.Candidate(0.3, 32, half.macs // 5, 100_000, 110_000, 20_000, 22_016, True, chosen=True)
    text = fit.table([chosen], budget, widths, "mobilenet")
    assert "`edgecls finetune DATA --model mobilenet --alpha 0.5 --input-size 32`" in text
    assert "also fits, with 5.0x the chosen model's MACs" in text
    assert fit.wider_hint(widths, chosen, "mobilenet") in text
    assert "alpha 0.5" not in fit.table([chosen], budget, [c for c in widths if c.alpha != 0.5], "mobilenet")


def test_fit_searches_the_input_size_and_every_later_stage_takes_it(tmp_path, capsys):
    """A 48 px run fitted at 40 px (`optimize.fit_input_sizes`): the RAM budget is the 40 px copy's own arena, so
    `--fit` keeps every channel (the most MACs that fit) at 40 px, and export, validate and firmware work on it."""
    from edgecls.devices import DeviceProfile
    from edgecls.optimize import fit

    run_path = finetune_tiny(tmp_path, train=16, test=4, **{"model.input_size": 48, "train.strategy": "frozen", "train.epochs": 1})
    model = RunDir(run_path).load_model("finetune")[0]
    roomy = fit.Budget.of(DeviceProfile(name="roomy", kind="mcu", flash_bytes=1 << 30, ram_bytes=1 << 30),
                          flash_reserve=0, ram_reserve=0, arena_margin=0.1)  # fmt: skip
    at_40 = fit.measure(model, 0.0, "l1", roomy, size=40)
    profile = tmp_path / "ram-mcu.yaml"
    profile.write_text(f"name: ram-mcu\nkind: mcu\nflash_bytes: 1048576\nram_bytes: {at_40.arena_with_margin}\n")
    args = ["optimize", run_path, "--fit", profile, "--epochs", "1", "--set", "optimize.fit_ram_reserve=0",
            "--set", "optimize.fit_input_sizes=40", "--set", "optimize.fit_trials=1"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, out + err
    candidates = json.loads((run_path / "fit/ram-mcu/fit.json").read_text())["candidates"]
    assert len(candidates) == 8 and {c["input_size"] for c in candidates} == {40}
    widths = json.loads((run_path / "fit/ram-mcu/fit.json").read_text())["other_widths"]
    assert [(c["alpha"], c["input_size"]) for c in widths] == [(0.5, 40), (0.75, 40), (1.0, 40)]
    (chosen,) = [c for c in candidates if c["chosen"]]
    assert (chosen["ratio"], chosen["input_size"], chosen["arena_bytes"]) == (0.0, 40, at_40.arena_bytes)
    assert all(c["p50_ms"] > 0 for c in candidates + widths if c["int8_bytes"])  # timed for the table, judged only on Linux
    run = RunDir(run_path)
    assert run.stage("channels")["metrics"]["input_size"] == 40
    assert run.load_model("channels")[0].input_shape == (None, 40, 40, 3)

    code, out, err = run_cli(["export", run_path, "--int8", "--format", "tflite", "--set", "export.calibration_samples=12"], capsys)
    assert code == 0, out + err
    from edgecls.export.tflite import input_shape, read_metadata

    flatbuffer = (run_path / "export/channels/model_int8.tflite").read_bytes()
    assert input_shape(flatbuffer) == [1, 40, 40, 3] and read_metadata(flatbuffer)["input_size"] == 40
    args = ["validate", run_path, "--tflm-images", "4", "--max-int8-drop", "100", "--set", "validate.min_agreement_tflm=0"]
    code, out, err = run_cli(args, capsys)  # an untrained model's near-tied scores may flip between TFLM and LiteRT
    assert code == 0, out + err
    rows = json.loads((run_path / "validate.json").read_text())["rows"]
    assert {r["runtime"] for r in rows} == {"litert", "tflite-micro"} and all(r["status"] == "pass" for r in rows)
    code, out, err = run_cli(["firmware", run_path, "--device", str(profile)], capsys)
    assert code == 0, out + err
    headers = [p.read_text() for p in (run_path / "firmware/channels").rglob("*.h")]
    assert any("kInputHeight = 40;" in text for text in headers)
