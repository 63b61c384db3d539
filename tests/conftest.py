"""Shared test fixtures: where the golden files are, and the models they were made with."""
import dataclasses
import os
from pathlib import Path

import pytest

FIXTURES = Path(os.environ.get("SWIFTVR_FIXTURES",
                               Path(__file__).resolve().parents[1].parent / "shared/reference/fixtures"))
REFERENCE = FIXTURES.parent


def fixture_model(window_hw=(4, 4)):
    """The models the fixtures were made with: seeded full ReAE, stored tiny DiT, stored prompt."""
    from safetensors.torch import load_file
    from swiftvr.checkpoint import SwiftVR
    from swiftvr.config import DiTConfig
    from swiftvr.reae import ReAE, seeded_reae_state_dict
    from swiftvr.transformer import SwiftVRTransformer

    cfg = dataclasses.replace(DiTConfig.from_json(FIXTURES / "dit_tiny_config.json"), self_attn_window_hw=window_hw)
    transformer = SwiftVRTransformer(cfg)
    transformer.load_state_dict(load_file(FIXTURES / "dit_tiny_weights.safetensors"), strict=True)
    reae = ReAE()
    reae.load_state_dict(seeded_reae_state_dict(0), strict=True)
    prompt = load_file(FIXTURES / "dit_tiny.safetensors")["prompt_emb"]
    return SwiftVR(reae.eval(), transformer.eval(), prompt, "fixtures")


@pytest.fixture(scope="session")
def pipeline_model():
    """The pipeline fixtures' model (window 2x2)."""
    return fixture_model(window_hw=(2, 2))


def pytest_configure(config):
    # Under `pytest -n 2` each worker gets one core: two workers with two threads each fight over
    # two cores and run slower than one thread each.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")


# The files whose tests take minutes, queued first (whole files, so module fixtures are made once):
# pytest-xdist (--dist loadscope) hands out files in collection order, and a long file started last
# keeps one worker busy while the other idles.
LONG_FIRST = ("test_contract.py", "test_calibration.py", "test_ray.py", "test_make_engine.py", "test_dynamic_dit.py",
              "test_embed.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))
