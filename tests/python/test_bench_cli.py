"""`qforge bench` on the CPU with a tiny synthetic Llama: the JSON report names the KV cache size
it ran with (-c / --ctx-size, or what the tests need), and a -c smaller than the tests need is an
error with a non-zero exit, not a run with a cache that overflows."""
import json
import os
import subprocess
from pathlib import Path

import pytest

QFORGE = os.environ.get("QFORGE_BIN", "build/release/qforge")
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "data" / "fixtures" / "hf" / "llama_tiny" / "config.json"


def qforge(*args):
    return subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "llama_tiny.gguf"
    proc = qforge("synth", "-q", "--arch", "llama", "--config", CONFIG, "-o", out, "--type", "Q4_0")
    assert proc.returncode == 0, proc.stderr
    return out


def bench_json(model, *extra):
    proc = qforge("bench", "-m", model, "-p", 8, "-n", 4, "-d", 3, "-r", 1, "-t", 1, "--json",
                  *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cache_sized_for_the_tests_by_default(model):
    report = bench_json(model)
    assert report["n_ctx"] == 3 + 8 + 1  # depth + the longer test + 1
    assert report["tg"]["mean"] > 0 and report["pp"]["mean"] > 0


def test_ctx_size_sets_the_cache(model):
    report = bench_json(model, "-c", 96)
    assert report["n_ctx"] == 96
    assert report["tg"]["mean"] > 0


def test_ctx_size_too_small_fails_clearly(model):
    proc = qforge("bench", "-m", model, "-p", 8, "-n", 4, "-d", 3, "-r", 1, "-c", 5)
    assert proc.returncode != 0
    assert "-c 5 is too small" in proc.stderr and "12 positions" in proc.stderr


def test_decode_x_is_for_cuda_and_named(model):
    """--decode-x picks the CUDA decode GEMVs' activations: on the CPU it is an error, and a name
    other than exact or int8 is refused before any model is loaded."""
    proc = qforge("bench", "-m", model, "-p", 8, "-n", 4, "-r", 1, "--decode-x", "int8")
    assert proc.returncode != 0
    assert "--decode-x applies to --device cuda only" in proc.stderr
    proc = qforge("bench", "-m", model, "-p", 8, "-n", 4, "-r", 1, "--device", "cuda",
                  "--decode-x", "int4")
    assert proc.returncode != 0
    assert "unknown decode x representation 'int4' (expected exact or int8)" in proc.stderr
