"""Loading the release layout: single and sharded files, fp32 and bf16, and clear errors."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from swiftvr.checkpoint import CheckpointError, checkpoint_sha256, load_checkpoint, load_transformer
from swiftvr.random_checkpoint import main as random_checkpoint_main, random_model, write_random_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    random_checkpoint_main(["--preset", "tiny", "--out", str(out), "--seed", "3"])
    return out


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_random_checkpoint_loads_back(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    built = random_model("tiny", seed=3)
    assert_same_weights(loaded.transformer, built.transformer)
    assert_same_weights(loaded.reae, built.reae)
    assert torch.equal(loaded.prompt_emb, built.prompt_emb)
    assert loaded.prompt_emb.shape == (16, 64)
    assert not any(p.is_meta for p in loaded.transformer.parameters())


def test_seed_changes_weights():
    a, b = random_model("tiny", seed=0), random_model("tiny", seed=1)
    assert not torch.equal(a.transformer.proj_out.weight, b.transformer.proj_out.weight)


def test_sharded_and_bf16_files(tmp_path):
    out = write_random_checkpoint("tiny", tmp_path / "sharded", seed=3, dtype=torch.bfloat16, shard_bytes=200_000)
    index = json.loads((out / "transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    loaded = load_transformer(out / "transformer", dtype=torch.float32)
    expected = random_model("tiny", seed=3).transformer.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, expected[k].to(torch.bfloat16).float()), k
    as_bf16 = load_transformer(out / "transformer", dtype=torch.bfloat16)
    assert as_bf16.proj_out.weight.dtype == torch.bfloat16


def broken_copy(src, dst, edit):
    shutil.copytree(src / "transformer", dst / "transformer")
    for name in ("reae.safetensors", "prompt_embedding.safetensors"):
        (dst / name).symlink_to(src / name)
    path = dst / "transformer/diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("blocks.1.attn1.to_k.bias"), "missing keys: blocks.1.attn1.to_k.bias"),
    (lambda t: t.update({"blocks.0.extra.weight": torch.zeros(2)}), "unexpected keys: blocks.0.extra.weight"),
    (lambda t: t.update({"proj_out.bias": torch.zeros(7)}), r"mis-shaped keys: proj_out.bias \[7\] \(expected \[192\]\)"),
])
def test_key_errors_name_the_keys(tiny_checkpoint, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(broken_copy(tiny_checkpoint, tmp_path, edit))


def test_reference_tolerated_keys_are_ignored(tiny_checkpoint, tmp_path):
    folder = broken_copy(tiny_checkpoint, tmp_path, lambda t: t.update({"blocks.0.norm_added_q.weight": torch.ones(128)}))
    load_checkpoint(folder)


def test_missing_files(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    shutil.copytree(tiny_checkpoint, tmp_path / "c")
    (tmp_path / "c/reae.safetensors").unlink()
    with pytest.raises(CheckpointError, match="reae.safetensors not found"):
        load_checkpoint(tmp_path / "c")


def test_prompt_layout_is_checked(tiny_checkpoint, tmp_path):
    folder = tmp_path / "p"
    shutil.copytree(tiny_checkpoint, folder)
    save_file({"prompt_emb": torch.zeros(16, 64)}, folder / "prompt_embedding.safetensors")
    with pytest.raises(CheckpointError, match=r"\[1, L, text_dim\]"):
        load_checkpoint(folder)


def test_hash_follows_content(tiny_checkpoint, tmp_path):
    before = checkpoint_sha256(tiny_checkpoint)
    assert before == checkpoint_sha256(tiny_checkpoint)
    folder = tmp_path / "h"
    shutil.copytree(tiny_checkpoint, folder)
    save_file({"prompt_emb": torch.ones(1, 16, 64)}, folder / "prompt_embedding.safetensors")
    assert checkpoint_sha256(folder) != before


def test_writer_refuses_non_empty_folder(tiny_checkpoint):
    with pytest.raises(FileExistsError):
        write_random_checkpoint("tiny", tiny_checkpoint)
