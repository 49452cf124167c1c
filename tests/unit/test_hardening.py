"""Hostile and faulty inputs that need no trained model (issue 15): each is refused with one clear line."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error, make_image_folder, run_cli, snapshot

HOSTILE_LABELS = [
    'x"}; int injected = printf("RAN\\n"); const char* d[] = {"y',
    "back\\slash */ and // comment",
    "new\nline",
    "trigraph ??= and ??/",
    "naïve 猫",
    "",
]


# --- C/C++ strings: escaping compiles back to the exact bytes -------------------------------------------------


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile the generated header")
def test_hostile_class_names_compile_to_data_not_code(tmp_path):
    from edgecls.firmware import write_assets

    info = {
        "source": "export/finetune/model_int8.tflite */ injected(); /*\nsecond line",
        "sha256": "0" * 64,
        "labels": HOSTILE_LABELS,
        "ops": ["CONV_2D"],
        "settings": {
            "input_height": 8, "input_width": 8, "input_channels": 3, "input_type": "int8", "output_type": "int8",
            "input_scale": "0.5", "input_zero_point": 0, "output_scale": "0.25", "output_zero_point": 0,
            "num_classes": len(HOSTILE_LABELS), "normalization": "p / 127.5 - 1", "arena_measured": 1024,
            "arena_size": 1136, "margin_percent": 10,
        },
    }  # fmt: skip
    write_assets(tmp_path, b"TFL3" * 8, info, namespace="edgecls_model", prefix="")
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include "model_settings.h"\n#include "model_data.h"\n'
        "int main() { for (int i = 0; i < edgecls_model::kNumClasses; ++i) "
        'std::printf("%s%c", edgecls_model::kCategoryLabels[i], 0); return 0; }\n'
    )
    build = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-trigraphs", "main.cc", "model_data.cc", "-o", "labels"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    printed = subprocess.run([str(tmp_path / "labels")], capture_output=True).stdout
    assert b"RAN" not in printed.replace(b'printf("RAN', b"")  # the injected call did not run
    assert printed.split(b"\0")[:-1] == [label.encode() for label in HOSTILE_LABELS]


def test_markdown_escaping_keeps_a_table_row_one_row():
    from edgecls.escape import escape_markdown

    cell = escape_markdown("a | b\n<script>alert(1)</script> **bold**")
    assert "\n" not in cell and "<script>" not in cell
    assert "|" not in cell.replace("\\|", "")


# --- --force deletes only run folders ---------------------------------------------------------------------------


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path, image_folder, capsys):
    victim = tmp_path / "runs" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("not a run")
    args = ["finetune", "--data", image_folder, "--runs-dir", tmp_path / "runs", "--name", "victim", "--force",
            "--weights", "none", "--input-size", "32", "--epochs", "1"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, 2, "is not an edgecls run folder")
    assert (victim / "precious.txt").read_text() == "not a run"


# --- SSH device names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ssh://-oProxyCommand=touch /tmp/x@host", "ssh://user@-oProxyCommand=x", "ssh://us er@host", "ssh://user@host:99999"],
)
def test_ssh_names_that_could_be_options_are_refused(url):
    from edgecls.bench import Target
    from edgecls.errors import ConfigError

    with pytest.raises(ConfigError, match="`--device` must be"):
        Target.parse(url)


def test_ssh_pins_host_keys_and_ends_options_before_the_destination(monkeypatch):
    from edgecls.bench import SSHDevice, Target

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **_: calls.append(args) or subprocess.CompletedProcess(args, 0, "", ""))
    pinned = SSHDevice(Target.parse("ssh://pi@board:2222"), key=None, known_hosts="/keys/known", python="python3")
    pinned.ssh("true")
    assert "StrictHostKeyChecking=yes" in calls[-1]
    assert calls[-1][calls[-1].index("--") + 1] == "pi@board"
    unpinned = SSHDevice(Target.parse("ssh://pi@board"), key=None, known_hosts=None, python="python3")
    unpinned.copy([Path("/tmp/a")], "/remote")
    assert "StrictHostKeyChecking=accept-new" in calls[-1] and "--" in calls[-1]


def test_a_device_that_prints_invalid_json_is_a_clear_error():
    from edgecls.bench.ssh import worker_json
    from edgecls.errors import DeviceError

    for stdout in ("{not json", '["a list"]', "\x00\xff"):
        with pytest.raises(DeviceError):
            worker_json(subprocess.CompletedProcess([], 0, stdout, ""), "device")


# --- Data: archive bombs, pipes, links, pixel bombs -------------------------------------------------------------


def _zip_with(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zip_bomb_member_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from edgecls.data import sources
    from edgecls.errors import DataError

    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 1 << 20)
    path = _zip_with(tmp_path, {"train/a/1.png": bytes(4 << 20), "train/b/1.png": b"x"})
    assert path.stat().st_size < 64 << 10  # 4 MiB of zeros compress to a few KiB
    with pytest.raises(DataError, match=r"train/a/1.png is 4 MiB uncompressed, over the 1 MiB limit"):
        sources.list_source(str(path))


def test_archive_total_size_is_limited(tmp_path, monkeypatch):
    from edgecls.data import sources
    from edgecls.errors import DataError

    monkeypatch.setattr(sources, "MAX_ARCHIVE_BYTES", 3 << 20)
    tar_path = tmp_path / "data.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        for i in range(4):
            info = tarfile.TarInfo(f"train/c{i % 2}/{i}.png")
            info.size = 1 << 20
            archive.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(DataError, match="holds more than 0 GiB uncompressed|uncompressed"):
        sources.list_source(str(tar_path))


def test_fifo_and_links_in_a_tar_are_never_read(tmp_path):
    from edgecls.data.sources import list_source

    folder = make_image_folder(tmp_path / "images", train=2, test=1)
    tar_path = tmp_path / "data.tar"
    with tarfile.open(tar_path, "w") as archive:
        archive.add(folder, arcname="images")
        fifo = tarfile.TarInfo("images/train/blue/pipe.png")
        fifo.type = tarfile.FIFOTYPE
        archive.addfile(fifo)
        link = tarfile.TarInfo("images/train/blue/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    listed = list_source(str(tar_path))
    assert not any(i.endswith(("pipe.png", "link.png")) for i in listed.train.ids)


def test_pipes_and_broken_links_in_a_folder_are_skipped_with_a_warning(tmp_path):
    from edgecls.config import DataConfig
    from edgecls.data import load_dataset

    folder = make_image_folder(tmp_path / "images", train=4, test=2)
    os.mkfifo(folder / "train" / "blue" / "pipe.png")  # reading it would block forever
    (folder / "train" / "blue" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "train" / "red" / "loop.png").symlink_to(folder / "train" / "red" / "loop.png")
    data = load_dataset(DataConfig(source=str(folder), val_fraction=0.0), 32, seed=0)
    assert len(data.train) == 12
    assert any("skipped 3 entries that are not regular files or are broken links" in w for w in data.warnings)


def test_a_pipe_as_data_source_is_refused(tmp_path, capsys):
    pipe = tmp_path / "data.tar.gz"
    os.mkfifo(pipe)
    args = ["finetune", "--data", pipe, "--runs-dir", tmp_path / "runs", "--weights", "none", "--input-size", "32"]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, 2, "neither a folder nor a regular file")


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_declared_pixel_count_is_read_from_headers(tmp_path):
    import tensorflow as tf

    from edgecls.data.decode import header_pixels

    jpeg = tf.io.encode_jpeg(np.zeros([30, 20, 3], np.uint8)).numpy()
    png = tf.io.encode_png(np.zeros([7, 9, 3], np.uint8)).numpy()
    gif = b"GIF89a" + (300).to_bytes(2, "little") + (200).to_bytes(2, "little") + b"\0" * 8
    bmp = b"BM" + b"\0" * 16 + (640).to_bytes(4, "little") + (-480).to_bytes(4, "little", signed=True) + b"\0" * 8
    for data, pixels in ((jpeg, 600), (png, 63), (gif, 60000), (bmp, 307200), (_png_header(100000, 100000), 10**10)):
        assert int(header_pixels(tf.constant(data))) == pixels


def test_images_over_the_pixel_limit_are_skipped_before_decoding(tmp_path, monkeypatch):
    import tensorflow as tf

    from edgecls.data import decode
    from edgecls.data.sources import RawSplit

    small = tf.io.encode_png(np.zeros([8, 8, 3], np.uint8)).numpy()
    large = tf.io.encode_png(np.zeros([64, 64, 3], np.uint8)).numpy()
    forged = _png_header(100000, 100000)  # a 40 G-pixel canvas in 33 bytes
    raw = RawSplit(["small", "large", "forged"], np.zeros(3, np.int32), [small, large, forged], "bytes")
    monkeypatch.setattr(decode, "MAX_PIXELS", 1000)
    decoded = decode.decode_split(raw, 16)
    assert decoded.ids == ["small"] and decoded.skipped == ["large", "forged"]


# --- Config and profile files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"- a\n- b\n", "must be a mapping of config sections; got a list"),
        (b"train: 3\n", "config section `train`"),
        (b"train:\n  epochs: 2\n  epochs: 3\n", "key `epochs` is given twice"),
        (b"\xff\xfe\x00binary", "is not a UTF-8 text file"),
        (b"train: [unclosed\n", "is not valid YAML"),
        (b"export:\n  strip_strings: maybe\n", "`export.strip_strings` must be true or false"),
    ],
)
def test_bad_config_files(tmp_path, image_folder, capsys, text, message):
    config = tmp_path / "c.yaml"
    config.write_bytes(text)
    args = ["finetune", "--config", config, "--data", image_folder, "--runs-dir", tmp_path / "runs"]
    before = snapshot(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, 2, message)
    assert snapshot(tmp_path) == before


def test_booleans_can_be_set_from_the_command_line():
    from edgecls.config import load_config

    assert load_config(overrides={"export.strip_strings": "true"}).export.strip_strings is True
    assert load_config(overrides={"optimize.qat": "False"}).optimize.qat is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"name: m\nkind: mcu\nflash_bytes: 1000\n", "needs `ram_bytes`"),
        (b"name: m\nkind: mcu\nflash_bytes: lots\nram_bytes: 10\n", "`profile m.flash_bytes` must be an integer"),
        (b"name: m\nkind: mcu\nflash_bytes: -5\nram_bytes: 10\n", "`flash_bytes` must be a positive number"),
        (b"name: m\nkind: linux\n", "needs one of `max_model_bytes`"),
        (b"[1, 2]\n", "needs `name` and `kind: mcu|linux`"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "is not a UTF-8 text file"),
        (b"name: m\nkind: mcu\nflash_bytes: 1\nram_bytes: 1\nram_bytes: 2\n", "key `ram_bytes` is given twice"),
        (b"name: m\nkind: mcu\nflash_bytes: 1\nram_bytes: 1\ncolour: red\n", "unknown config key `profile m.colour`"),
    ],
)
def test_bad_device_profiles(tmp_path, text, message):
    from edgecls.devices import load_profile
    from edgecls.errors import ConfigError

    path = tmp_path / "board.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_profile(str(path))
    assert message in str(caught.value)


def test_shipped_profiles_load_typed():
    from edgecls.devices import list_profiles, load_profile

    assert "cortex-m4-stm32f446" in list_profiles()
    small = load_profile("cortex-m4-stm32f446")
    assert (small.kind, small.flash_bytes, small.ram_bytes) == ("mcu", 512 * 1024, 128 * 1024)
    assert all(load_profile(name).kind in ("mcu", "linux") for name in list_profiles())


# --- Child processes --------------------------------------------------------------------------------------------


def _segfault() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def _raise_value_error(text: str) -> None:
    raise ValueError(text)


def test_a_native_crash_in_a_child_becomes_a_worker_error():
    from edgecls.errors import WorkerError
    from edgecls.runtimes import call_isolated

    with pytest.raises(WorkerError, match=r"crashed \(SIGSEGV\)"):
        call_isolated(_segfault)
    with pytest.raises(WorkerError, match="ValueError: bad file"):
        call_isolated(_raise_value_error, "bad file")
    assert call_isolated(max, 3, 7) == 7


# --- Commands and options that used to print a traceback or accept nonsense -------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "--input-size", "0"], "`--input-size` must be in [32, 224] pixels; got 0."),
        (["calibrate", "--data", "x", "--input-size", "-3"], "`--input-size` must be in [32, 224] for mobilenet; got -3."),
        (["calibrate", "--data", "x", "--samples", "0"], "`--samples` must be a positive integer; got 0."),
        (["validate", "run", "--min-agreement-fp32", "5"], "`--min-agreement-fp32` must be a fraction in [0, 1]; got 5.0."),
        (["validate", "run", "--max-int8-drop", "-10"], "`--max-int8-drop` must be in [0, 100] percentage points"),
        (["export", "run", "--calibration-samples", "0"], "`--calibration-samples` must be a positive integer; got 0."),
        (["export", "run", "--set", "export.strip_strings=perhaps"], "`export.strip_strings` must be true or false"),
        (["optimize", "run", "--prune", "2"], "`--prune` must be a sparsity in (0, 1); got 2.0."),
        (["bench", "run", "--device", "ssh://-oProxyCommand=x@h"], "`--device` must be `host` or `ssh://user@host[:port]`"),
    ],
)
def test_bad_options_name_the_flag(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, 2, message)
    assert not any(tmp_path.iterdir())


def test_calibrate_output_errors_name_output(tmp_path, capsys):
    (tmp_path / "file").write_text("a file where a folder should be")
    args = ["calibrate", "--data", "cifar10", "--output", tmp_path / "file" / "cal.json"]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, 2, "choose another `--output`")


def test_ctrl_c_during_finetune_prints_the_resume_command(tmp_path, image_folder, capsys, monkeypatch):
    import edgecls.train

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgecls.train, "run_finetune", interrupted)
    args = ["finetune", "--data", image_folder, "--runs-dir", tmp_path / "runs", "--name", "r1", "--weights", "none"]
    code, _, err = run_cli(args, capsys)
    assert code == 130
    hint = f"`edgecls finetune --name r1 --runs-dir {tmp_path / 'runs'} --resume`"
    assert err.strip() == f"edgecls: interrupted; continue with {hint}."


@pytest.mark.parametrize(
    ("command", "setting", "message"),
    [
        ("finetune", "run.seed=-1", "`run.seed` must be a non-negative integer"),
        ("finetune", "run.colour=red", "unknown config key `run.colour`"),
        ("finetune", "data.batch_size=0", "`data.batch_size` must be in [1, 4096]"),
        ("finetune", "data.augment=crop,rotate", "`data.augment` must be a subset of crop, flip, color"),
        ("finetune", "model.dropout=2", "`model.dropout` must be in [0, 1)"),
        ("finetune", "model.input_size=big", "`model.input_size` must be an integer"),
        ("finetune", "train.lr=5", "`train.lr` must be in (0, 1]"),
        ("finetune", "train.batchnorm=sometimes", "`train.batchnorm` must be one of frozen, train"),
        ("optimize", "optimize.epochs=0", "`optimize.epochs` must be a positive integer"),
        ("optimize", "optimize.granularity=per-row", "`optimize.granularity` must be one of per-channel, per-tensor"),
        ("export", "export.check_per_class=0", "`export.check_per_class` must be a positive integer"),
        ("export", "export.io=int4", "`export.io` must be one of int8, uint8, float"),
        ("export", "nosuchsection.key=1", "unknown config section `nosuchsection`"),
    ],
)
def test_every_config_section_checks_its_values(tmp_path, image_folder, capsys, monkeypatch, command, setting, message):
    monkeypatch.chdir(tmp_path)
    target = ["--data", image_folder] if command == "finetune" else [tmp_path / "run"]
    before = snapshot(tmp_path)
    code, _, err = run_cli([command, *target, "--set", setting], capsys)
    assert_one_error(code, err, 2, message)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["config", "profile", "calibration"])
def test_empty_files_are_refused_or_mean_the_defaults(tmp_path, capsys, kind):
    empty = tmp_path / ("empty.json" if kind == "calibration" else "empty.yaml")
    empty.write_bytes(b"")
    if kind == "config":  # an empty config is the defaults: valid, and says so by loading
        from edgecls.config import EdgeConfig, load_config

        assert load_config(empty) == EdgeConfig()
        return
    from edgecls.errors import EdgeclsError

    if kind == "profile":
        from edgecls.devices import load_profile as read
    else:
        from edgecls.calibration import read_manifest as read
    with pytest.raises(EdgeclsError) as caught:
        read(str(empty))
    assert caught.value.exit_code == 2
    assert ("needs `name` and `kind" if kind == "profile" else "is not valid JSON") in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"pipeline:\n  stages: [finetune, deploy]\n", "`pipeline.stages` must be a subset of"),
        (b"bench:\n  threads: [0]\n", "`bench.threads` must be positive integers"),
        (b"firmware:\n  arena_margin: 3\n", "`firmware.arena_margin` must be in [0, 1]"),
        (b"validate:\n  tflm_images: -1\n", "`validate.tflm_images` must be zero or more"),
        (b"validate:\n  min_agreement_tflm: 1.5\n", "`validate.min_agreement_tflm` must be a fraction in [0, 1]"),
        (b"model:\n  name: [mobilenet]\n", "`model.name` must be a string"),
    ],
)
def test_edgecls_run_checks_every_section_first(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "pipeline.yaml"
    config.write_bytes(text)
    before = snapshot(tmp_path)
    code, _, err = run_cli(["run", config], capsys)
    assert_one_error(code, err, 2, message)
    assert snapshot(tmp_path) == before


def test_op_layers_that_touch_the_world_are_refused_and_keras_own_are_not():
    """A TFOpLambda naming tf.io.write_file would write when the model runs; MobileNetV3's ops are arithmetic."""
    import tensorflow as tf
    import tf_keras

    from edgecls.modelfile import unsafe_objects
    from edgecls.models import create_model

    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf.math.add(inputs, 1.0))
    config = json.loads(model.to_json())
    assert unsafe_objects(config) == []
    planted = json.loads(json.dumps(config).replace('"function": "math.add"', '"function": "io.write_file"'))
    assert planted != config
    assert any("tf.io.write_file" in item for item in unsafe_objects(planted))
    v3, _ = create_model("mobilenet_v3_small", input_size=32, weights="none")
    assert unsafe_objects(json.loads(v3.to_json())) == []
