"""libswiftvr (runtime/c/): the C ABI, the C++ wrapper and the examples, built with CMake here.

Everything runs the same cpu bundle as tests/test_runtime.py (tiny preset, seed 0, 17x16 -> 34x32,
clip_len 8). The C library embeds the Python runtime, so its frames must be byte-identical to
`python -m runtime.stream` on the same frames: no tolerance (same code, same ONNX Runtime calls).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.serve.common import yuv420p_to_rgb      # the gRPC endpoint's conversion: the C one must agree
from test_runtime import SIZE, cpu_bundle, cpu_model, moving_frames, run_cli  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
OUT_SIZE = (2 * SIZE[0], 2 * SIZE[1])
RAW_SIZE = f"{SIZE[0]}x{SIZE[1]}"

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def cmake_build(folder: Path, *options: str, targets=()) -> Path:
    configure = ["cmake", "-S", str(REPO / "runtime/c"), "-B", str(folder), f"-DPython3_EXECUTABLE={sys.executable}",
                 *options]
    build = ["cmake", "--build", str(folder), "-j", "2", *[arg for t in targets for arg in ("--target", t)]]
    for step in (configure, build):
        done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(step)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return folder


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    return cmake_build(tmp_path_factory.mktemp("embed-build"))


@pytest.fixture(scope="session")
def asan_build(tmp_path_factory):
    return cmake_build(tmp_path_factory.mktemp("embed-asan"), "-DSWIFTVR_SANITIZE=address",
                       targets=("restore_raw", "check_api"))


def run(program, *args, stdin=None, env=None, timeout=120):
    return subprocess.run([str(program), *map(str, args)], input=stdin, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


_stream_outputs = {}


def stream_output(bundle, frames) -> bytes:
    """python -m runtime.stream's raw RGB24 output for these frames (once per clip)."""
    key = (str(bundle), frames.tobytes())
    if key not in _stream_outputs:
        done = run_cli("--engine", bundle, "-", "--raw-size", RAW_SIZE, "--raw-fps", "25", "-o", "-",
                       stdin=frames.tobytes())
        assert done.returncode == 0, done.stderr.decode()
        _stream_outputs[key] = done.stdout
    return _stream_outputs[key]


# ---- examples against the Python runtime ------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 5])
def test_c_example_gives_the_stream_cli_bytes(build, cpu_bundle, batch):
    frames = moving_frames(19, *SIZE, seed=7)
    done = run(build / "restore_raw", cpu_bundle, RAW_SIZE, "--batch", batch, stdin=frames.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""                          # the library prints nothing unless asked
    assert len(done.stdout) == 19 * OUT_SIZE[0] * OUT_SIZE[1] * 3
    assert done.stdout == stream_output(cpu_bundle, frames)


def test_resize_option_stretches_as_the_stream_cli_does(build, cpu_bundle):
    """swiftvr_session_options.resize: the library fits frames of another size with video/resize.py
    (the Session takes the model's size only), as python -m runtime.stream --resize does raw frames."""
    frames = moving_frames(11, 23, 19, seed=4)
    done = run(build / "restore_raw", cpu_bundle, "23x19", "--resize", "--batch", 4, stdin=frames.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    cli = run_cli("--engine", cpu_bundle, "-", "--raw-size", "23x19", "--raw-fps", "25", "--resize", "-o", "-",
                  stdin=frames.tobytes())
    assert cli.returncode == 0, cli.stderr.decode()
    assert len(done.stdout) == 11 * OUT_SIZE[0] * OUT_SIZE[1] * 3 and done.stdout == cli.stdout


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """BT.601 limited-range yuv420p (as ffmpeg lays it out), chroma from each 2x2 block's top left."""
    count, height, width = frames.shape[:3]
    rgb = frames.astype(np.float64)
    y = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    u = 128 + (-37.797 * rgb[..., 0] - 74.203 * rgb[..., 1] + 112.0 * rgb[..., 2]) / 255
    v = 128 + (112.0 * rgb[..., 0] - 93.786 * rgb[..., 1] - 18.214 * rgb[..., 2]) / 255
    planes = [np.clip(np.round(p), 0, 255).astype(np.uint8).reshape(count, -1)
              for p in (y, u[:, ::2, ::2], v[:, ::2, ::2])]
    return np.concatenate(planes, axis=1)


def test_yuv420p_input_is_the_documented_conversion(build, cpu_bundle):
    frames = moving_frames(13, *SIZE, seed=3)
    yuv = rgb_to_yuv420p(frames)
    rgb = yuv420p_to_rgb(yuv, *SIZE)
    # The formula is the right one: solid colours (nothing lost to 4:2:0) come back within the
    # rounding of Y, U and V to integers, each off by <= 0.5, times the largest coefficient (2.02).
    solid = np.broadcast_to(np.array([[0, 0, 0], [255, 255, 255], [200, 30, 60], [20, 180, 240]], np.uint8)
                            [:, None, None], (4, SIZE[1], SIZE[0], 3))
    assert np.abs(yuv420p_to_rgb(rgb_to_yuv420p(solid), *SIZE).astype(int) - solid).max() <= 2
    as_rgb = run(build / "restore_raw", cpu_bundle, RAW_SIZE, stdin=rgb.tobytes())
    as_yuv = run(build / "restore_raw", cpu_bundle, RAW_SIZE, "--yuv420p", stdin=yuv.tobytes())
    assert as_yuv.returncode == 0 and as_rgb.returncode == 0, as_yuv.stderr.decode() + as_rgb.stderr.decode()
    assert as_yuv.stdout == as_rgb.stdout


def test_cpp_example_two_threads_give_the_bytes_of_one_and_of_python(build, cpu_bundle, tmp_path):
    clips = {"a": moving_frames(19, *SIZE, seed=7), "b": moving_frames(13, *SIZE, seed=3)}
    for name, frames in clips.items():
        frames.tofile(tmp_path / f"{name}.rgb")

    def restore(tag, *flags):
        done = run(build / "restore_two_threads", cpu_bundle, RAW_SIZE, tmp_path / "a.rgb", tmp_path / f"a.{tag}",
                   tmp_path / "b.rgb", tmp_path / f"b.{tag}", *flags)
        assert done.returncode == 0, done.stderr.decode()
        return {name: (tmp_path / f"{name}.{tag}").read_bytes() for name in clips}

    two = restore("two")
    assert two == restore("one", "--one-thread")
    for name, frames in clips.items():
        assert two[name] == stream_output(cpu_bundle, frames), name


def test_sessions_on_two_threads_progress_together(build, cpu_bundle):
    """While thread A's pushes compute chunks, thread B's cheap calls (push of no frames) need the
    interpreter lock. Had A kept the lock while computing, B could only get it when Python's switch
    interval (5 ms) forces A to let go: at most one call per 5 ms of A. It makes far more."""
    done = run(build / "check_threads", cpu_bundle)
    assert done.returncode == 0, done.stderr.decode()
    found = dict(re.findall(r"(\w+) ([\d.]+)", done.stdout.decode()))
    a_seconds, b_calls = float(found["a_seconds"]), int(found["b_calls_during_a"])
    switch_interval = sys.getswitchinterval()
    assert b_calls > 2 * a_seconds / switch_interval, done.stdout.decode()


# ---- errors ----------------------------------------------------------------------------------

ARGUMENT, SETUP, INPUT_SIZE, CLOSED, PYTHON = 1, 2, 4, 5, 6


def python_error(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(caught.value)


def test_every_error_path_returns_its_code_and_the_runtime_message(build, cpu_bundle, cpu_model, tmp_path):
    from runtime import Session, load_bundle
    truncated, other = tmp_path / "truncated.plan", tmp_path / "notes.txt"
    truncated.write_bytes(cpu_bundle.read_bytes()[:1_000_000])
    other.write_text("not a bundle\n")
    done = run(build / "check_api", cpu_bundle, truncated, other)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""                  # no traceback, no warning: errors travel as codes
    got = {name: (int(code), message) for name, code, message in
           (line.split("\t") for line in done.stdout.decode().splitlines())}

    assert got["version"] == (1, "0.1.0")
    assert got["sizes"] == (0, f"{RAW_SIZE} {OUT_SIZE[0]}x{OUT_SIZE[1]} 8")
    # The runtime's own text for the same mistakes, from the same Python code.
    assert got["open_missing_path"] == (SETUP, python_error(lambda: load_bundle("/nonexistent/tiny.plan")))
    assert got["open_truncated"] == (SETUP, python_error(lambda: load_bundle(truncated)))
    assert got["open_not_a_model"] == (SETUP, python_error(lambda: load_bundle(other)))
    assert got["open_wrong_backend"] == (SETUP, python_error(lambda: load_bundle(cpu_bundle, "tensorrt")))
    assert got["open_unknown_backend"] == (SETUP, python_error(lambda: load_bundle(cpu_bundle, "nonsense")))
    wrong = np.zeros((1, SIZE[1], SIZE[0] + 1, 3), np.uint8)
    assert got["push_wrong_size"] == (INPUT_SIZE, python_error(lambda: Session(cpu_model).push(wrong)))
    closed = Session(cpu_model)
    closed.close()
    assert got["push_after_close"] == (CLOSED, python_error(lambda: closed.push(wrong)))
    assert got["flush_after_close"][0] == CLOSED and got["push_after_flush"][0] == CLOSED
    # NULL arguments and bad options: the function and the argument are named.
    for name, needle in [("open_null_path", "path is NULL"), ("open_null_result", "model (the result pointer)"),
                         ("open_bad_struct_size", "struct_size"), ("input_size_null", "must not be NULL"),
                         ("session_null_model", "model is NULL"), ("session_null_result", "session (the result"),
                         ("session_bad_in_flight", "in_flight must be >= 0"), ("push_null_session", "session is NULL"),
                         ("push_null_frames", "frames is NULL"), ("push_bad_format", "unknown pixel format 7"),
                         ("receive_null_got", "must not be NULL"), ("receive_null_out", "must not be NULL"),
                         ("flush_null", "session is NULL")]:
        assert got[name][0] == ARGUMENT and needle in got[name][1], (name, got[name])
    # What works keeps working: a session outlives its model's handle; receive takes what fits.
    for name in ["open", "session", "push", "close", "close_again", "session2", "push_after_model_free",
                 "flush_after_model_free", "receive"]:
        assert got[name] == (0, ""), (name, got[name])
    assert got["received"] == (1, "1")         # 2 frames restored, 1 received, 1 still queued


def test_a_wrong_python_home_or_root_is_a_clear_error(build, cpu_bundle, tmp_path):
    for variable, value in [("SWIFTVR_PYTHON_HOME", "/nowhere"), ("SWIFTVR_PYTHON_HOME", str(tmp_path)),
                            ("SWIFTVR_ROOT", str(tmp_path))]:
        done = run(build / "restore_raw", cpu_bundle, RAW_SIZE, stdin=b"", env={variable: value})
        assert done.returncode == 1
        message = done.stderr.decode()
        assert message.startswith(f"error: {variable}={value} ") and message.count("\n") == 1, message


def assert_refused(done, status, *needles):
    """Refused with `status`, one "error: ..." line naming `needles` on stderr, nothing on stdout."""
    message = done.stderr.decode()
    assert done.returncode == status, (done.returncode, message)
    assert message.startswith("error: ") and message.count("\n") == 1, message
    assert all(needle in message for needle in needles), (needles, message)
    assert done.stdout == b""


# Each was accepted before: as a default, as garbage that exited 0 with no output (--batch
# 2000000000: malloc's NULL went to fread), or as a value that ran for minutes (--threads 100000).
# Per argument: (WxH, options, what the message must say).
NUMBERS = {"--batch": (1024, ["2000000000", "0", "-1", "12abc", "1.5", "", "1025", "99999999999999999999"]),
           "--threads": (256, ["100000", "257", "0", "-4", "4x", "1e3"]),
           "--in-flight": (64, ["65", "0", "-3", "3 "]),
           "--bench": (1000, ["1001", "0", "-1", "2e3", "0x10"])}
BAD_RESTORE_RAW_ARGUMENTS = {
    "WxH": [(size, (), f"the frame size must look like WIDTHxHEIGHT, e.g. 480x270, got {size}")
            for size in ["17x16x", "17", "17x", "x16", "17x16abc", "17 x16", "-17x16", "17x-16", "0x16", "17x0",
                         "+17x16", "99999999999999999999x16", "17x4294967312", "seventeen"]],
    **{flag: [(RAW_SIZE, (flag, value), f"{flag} takes a whole number from 1 to {most}, got {value}")
              for value in values] for flag, (most, values) in NUMBERS.items()},
    "no value": [(RAW_SIZE, ("--yuv420p", flag), f"{flag} needs a value") for flag in NUMBERS],
    "unknown": [(RAW_SIZE, ("--frames", "3"), "unknown option --frames")],
}


@pytest.mark.parametrize("argument", BAD_RESTORE_RAW_ARGUMENTS)
def test_restore_raw_refuses_bad_arguments_with_status_2(build, cpu_bundle, argument):
    frames = moving_frames(3, *SIZE, seed=7).tobytes()
    for size, options, needle in BAD_RESTORE_RAW_ARGUMENTS[argument]:
        done = run(build / "restore_raw", cpu_bundle, size, *options, stdin=frames, timeout=30)
        assert_refused(done, 2, needle)


def test_restore_raw_refuses_a_frame_size_the_model_does_not_take(build, cpu_bundle):
    # Before: 100000x100000 exited 0 with no output and no message (malloc's NULL went to fread).
    for size in ["100000x100000", "18x16"]:
        done = run(build / "restore_raw", cpu_bundle, size, stdin=moving_frames(2, *SIZE).tobytes(), timeout=60)
        assert_refused(done, 2, size, RAW_SIZE, "--resize stretches them")


def test_restore_raw_restores_whole_frames_then_reports_a_partial_one(build, cpu_bundle):
    """Like `runtime.stream` with truncated input: what was whole is restored and written, the
    partial frame is an error (status 1) that says how many bytes were left over."""
    frames = moving_frames(19, *SIZE, seed=7)
    frame_bytes = SIZE[0] * SIZE[1] * 3
    stdin = frames.tobytes() + bytes(frame_bytes // 2)
    for options in [("--batch", 5), ("--bench", 1)]:
        done = run(build / "restore_raw", cpu_bundle, RAW_SIZE, *options, stdin=stdin)
        message = done.stderr.decode()
        assert done.returncode == 1 and message.count("\n") == 1, (options, done.returncode, message)
        assert message.startswith(f"error: stdin: truncated frame 19: {frame_bytes // 2} of {frame_bytes} bytes "
                                  f"({RAW_SIZE} rgb24) left over; the 19 whole frames before it were restored"), message
        if options[0] == "--bench":
            assert re.fullmatch(rb"frames/s [\d.]+\n", done.stdout), done.stdout
        else:
            assert done.stdout == stream_output(cpu_bundle, frames)


def test_restore_two_threads_refuses_bad_arguments_with_status_2(build, cpu_bundle, tmp_path):
    moving_frames(3, *SIZE).tofile(tmp_path / "a.rgb")
    files = [tmp_path / "a.rgb", tmp_path / "a.out", tmp_path / "a.rgb", tmp_path / "b.out"]
    for size, extra, needle in [*[(size, [], f"must look like WIDTHxHEIGHT, e.g. 480x270, got {size}")
                                  for size in ["17x16x", "0x16", "-17x16", "99999999999x16"]],
                                ("18x16", [], f"the frames are 18x16, but {cpu_bundle} takes {RAW_SIZE} frames"),
                                (RAW_SIZE, ["--one-threads"], "unknown argument --one-threads"),
                                (RAW_SIZE, ["--one-thread", "-v"], "unknown argument -v")]:
        done = run(build / "restore_two_threads", cpu_bundle, size, *files, *extra, timeout=30)
        assert_refused(done, 2, needle)
        assert not (tmp_path / "a.out").exists() and not (tmp_path / "b.out").exists()


# ---- memory errors -----------------------------------------------------------------------------

def own_leaks(report: str) -> list[str]:
    """LeakSanitizer's records whose allocation stack passes through the library or the test program."""
    records = re.split(r"\n(?=(?:Direct|Indirect) leak of)", report)
    return [r for r in records if "leak of" in r and re.search(r"libswiftvr|swiftvr\.c|check_api|restore_raw", r)]


def test_address_sanitizer_finds_no_invalid_access_or_leak_in_the_library(asan_build, cpu_bundle, tmp_path):
    # Invalid accesses: the whole stream through the instrumented library, frames still right.
    # Leaks: every API path (check_api). Python is never finalized and its extension modules keep
    # allocations to the end, so only records that involve the library's own code count. The leak
    # scan is slow (it reads every writable page of numpy's and ONNX Runtime's libraries), so the
    # stream run below goes on meanwhile.
    truncated = tmp_path / "truncated.plan"
    truncated.write_bytes(cpu_bundle.read_bytes()[:1_000_000])
    leak_run = subprocess.Popen([str(asan_build / "check_api"), str(cpu_bundle), str(truncated), str(truncated)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:symbolize=0"})
    # Invalid accesses: the whole stream through the instrumented library, frames still right.
    frames = moving_frames(19, *SIZE, seed=7)
    done = run(asan_build / "restore_raw", cpu_bundle, RAW_SIZE, "--batch", 3, stdin=frames.tobytes(),
               env={"ASAN_OPTIONS": "detect_leaks=0"}, timeout=300)
    assert done.returncode == 0 and b"AddressSanitizer" not in done.stderr, done.stderr.decode()[-4000:]
    assert done.stdout == stream_output(cpu_bundle, frames)
    stdout, stderr = leak_run.communicate(timeout=300)
    report = stderr.decode()
    assert "ERROR: AddressSanitizer" not in report.replace("ERROR: LeakSanitizer", ""), report[-4000:]
    assert stdout.decode().count("\n") > 30, report[-4000:]
    assert own_leaks(report) == [], own_leaks(report)[:3]


# ---- install -------------------------------------------------------------------------------------

def test_install_gives_headers_library_and_package_files(build, tmp_path):
    prefix = tmp_path / "prefix"
    done = subprocess.run(["cmake", "--install", str(build), "--prefix", str(prefix)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    libdir = next(p.parent for p in prefix.rglob("libswiftvr.so"))
    for path in [prefix / "include/swiftvr.h", prefix / "include/swiftvr.hpp", libdir / "pkgconfig/swiftvr.pc",
                 libdir / "cmake/swiftvr/swiftvrConfig.cmake", prefix / "bin/restore_raw"]:
        assert path.is_file(), path
    # A C++ program built against the installed files only, through pkg-config.
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config is not installed")
    source = tmp_path / "version.cpp"
    source.write_text('#include <swiftvr.hpp>\n#include <cstdio>\n'
                      'int main() { std::printf("%s %d\\n", swiftvr_version(), swiftvr_abi_version()); }\n')
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "swiftvr"], capture_output=True, text=True,
                           env={**os.environ, "PKG_CONFIG_PATH": str(libdir / "pkgconfig")})
    assert flags.returncode == 0, flags.stderr
    compiled = subprocess.run(["g++", "-std=c++17", str(source), "-o", str(tmp_path / "version"),
                               *flags.stdout.split()], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    assert run(tmp_path / "version").stdout == b"0.1.0 1\n"
