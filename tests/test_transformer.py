"""The DiT against the official code's golden fixtures, and the 5B layout against the release key list."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, REFERENCE, fixture_model
from swiftvr.config import DiTConfig, get_preset
from swiftvr.rope import grid_tables
from swiftvr.transformer import SwiftVRTransformer, timestep_sinusoid

TOL = 1e-5   # the fixtures README: ~1e-5 absolute for a correct float32 re-implementation


@pytest.fixture(scope="module")
def golden():
    return load_file(FIXTURES / "dit_tiny.safetensors")


@pytest.fixture(scope="module")
def dit():
    return fixture_model().transformer


def check(name, actual, expected, record_property, tol=TOL):
    err = (actual.double() - expected.double()).abs().max().item()
    print(f"{name}: max abs err {err:.3g}")
    record_property(f"max_abs_err.{name}", err)
    assert err <= tol, f"{name}: {err} > {tol}"


def test_conditioning_matches_fixture(dit, golden, record_property):
    cond = dit.conditioning(golden["prompt_emb"])
    check("timestep_sinusoid", timestep_sinusoid(256), golden["timestep_sinusoid"], record_property)
    check("temb", cond.temb, golden["temb"], record_property)
    check("timestep_proj", cond.timestep_proj, golden["timestep_proj"], record_property)
    check("text_hidden", cond.text_hidden, golden["text_hidden"], record_property)


@pytest.mark.parametrize("case, latents, offset", [("a", "z_lq_a", 0), ("b", "z_lq_b", 5), ("c", "z_lq_b", 1030)])
def test_restore_matches_fixture(dit, golden, record_property, case, latents, offset):
    assert golden[f"t_off_{case}"].item() == offset
    z = golden[latents]
    cond = dit.conditioning(golden["prompt_emb"])
    with torch.no_grad():
        z_hq = dit.restore(z, cond, dit.grid_plan(dit.token_grid(z.shape), offset))
    check(f"z_hq_{case}", z_hq, golden[f"z_hq_{case}"], record_property)


def test_velocity_matches_model_forward(dit, golden, record_property):
    z = golden["z_lq_a"]
    with torch.no_grad():
        v = dit.velocity(z, dit.conditioning(golden["prompt_emb"]), dit.grid_plan(dit.token_grid(z.shape)))
    check("forward_pred_a", v, golden["forward_pred_a"], record_property)


def test_owner_rule_matters(dit, golden):
    """Guards the fixture test: shifted layers taking the earliest owner instead of the latest move z_hq."""
    import dataclasses
    from swiftvr import geometry
    z = golden["z_lq_a"]
    cond = dit.conditioning(golden["prompt_emb"])
    plan = dit.grid_plan(dit.token_grid(z.shape))
    shifted = geometry.window_layout((3, 9, 11), (4, 4), shifted=True)
    earliest = geometry.owner_index(dataclasses.replace(shifted, shifted=False))
    assert not np.array_equal(earliest, geometry.owner_index(shifted))
    plan.owners[1] = torch.from_numpy(earliest)
    with torch.no_grad():
        wrong = dit.restore(z, cond, plan)
    assert (wrong - golden["z_hq_a"]).abs().max() > 1e-2


@pytest.mark.parametrize("case, grid, offset", [("a", (3, 9, 11), 0), ("c", (4, 7, 11), 1030)])
def test_rope_tables_match_fixture(golden, case, grid, offset):
    cos, sin = grid_tables(grid, 64, offset, max_len=1024)
    np.testing.assert_array_equal(cos, golden[f"rope_cos_{case}"][0, :, 0].numpy())
    np.testing.assert_array_equal(sin, golden[f"rope_sin_{case}"][0, :, 0].numpy())


def test_rope_extension_rule_is_not_exact_angles(golden):
    """Past the 1024-entry cache the reference extrapolates from rounded values; exact angles differ."""
    cos, _ = grid_tables((4, 7, 11), 64, 1030, max_len=10**6)
    assert np.abs(cos - golden["rope_cos_c"][0, :, 0].numpy()).max() > 1e-6


def test_5b_layout_equals_release_keys():
    release = json.loads((REFERENCE / "keys_transformer_5b.json").read_text())
    with torch.device("meta"):
        model = SwiftVRTransformer(get_preset("5b").dit)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(release)
    assert ours == {k: v["shape"] for k, v in release.items()}
    assert sum(v.numel() for v in model.state_dict().values()) == 4_999_787_712


def test_tiny_preset_is_fixture_config():
    assert get_preset("tiny").dit == DiTConfig.from_json(FIXTURES / "dit_tiny_config.json")


def test_config_rejects_unsupported_fields():
    raw = json.loads((FIXTURES / "dit_tiny_config.json").read_text())
    with pytest.raises(ValueError, match="added_kv_proj_dim"):
        DiTConfig.from_dict({**raw, "added_kv_proj_dim": 64})


def test_fused_qkv_is_the_same_function(golden, record_property):
    dit = fixture_model().transformer
    z = golden["z_lq_a"]
    cond = dit.conditioning(golden["prompt_emb"])
    plan = dit.grid_plan(dit.token_grid(z.shape))
    with torch.no_grad():
        before = dit.restore(z, cond, plan)
        dit.fuse_qkv()
        after = dit.restore(z, cond, plan)
    assert not hasattr(dit.blocks[0].attn1, "to_q") and hasattr(dit.blocks[0].attn1, "to_qkv")
    check("fused_qkv", after, before, record_property, tol=1e-5)
