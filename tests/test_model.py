"""QwenModel (Rust/tch) against transformers on tiny random checkpoints: logits, gradients,
padding, rope scaling, bf16, save round trip, and error messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from asearcher import QwenModel
from asearcher.exceptions import AsearcherIOError, ModelError, TensorError
from tiny_models import make_tiny_qwen

transformers = pytest.importorskip("transformers")

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ),
]

VARIANTS = {
    "qwen2_untied": dict(variant="qwen2"),
    "qwen2_tied": dict(variant="qwen2", tie_word_embeddings=True),
    "qwen3_head_dim": dict(variant="qwen3", head_dim=24),
    "qwen2_sharded": dict(variant="qwen2", max_shard_size="20KB"),
    "qwen2_linear": dict(variant="qwen2", rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "qwen3_yarn": dict(
        variant="qwen3",
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: make_tiny_qwen(root / name, **kw) for name, kw in VARIANTS.items()}


def hf_model(path: Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def random_ids(vocab: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g)


def assert_close_scaled(ours: torch.Tensor, theirs: torch.Tensor, rtol: float) -> None:
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(checkpoints, name: str, device: str) -> None:
    path = checkpoints[name]
    ours = QwenModel.load(path, device=device)
    hf = hf_model(path, device=device)
    # Long enough that positions pass the yarn checkpoint's original context (64).
    ids = random_ids(ours.config["vocab_size"], (2, 80)).to(device)
    with torch.no_grad():
        theirs = hf(ids).logits.float()
    got = ours.logits(ids)
    assert got.shape == theirs.shape and got.dtype == torch.float32
    assert got.device.type == device
    assert_close_scaled(got, theirs, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_at_real_positions(checkpoints, side: str, device: str) -> None:
    path = checkpoints["qwen3_head_dim"]
    ours = QwenModel.load(path, device=device)
    hf = hf_model(path, device=device)
    ids = random_ids(ours.config["vocab_size"], (3, 12), seed=1).to(device)
    lengths = [12, 7, 3]
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, 12 - n :] = 1
    got = ours.logits(ids, attention_mask=mask)
    for row in range(len(lengths)):
        real = mask[row].bool()
        with torch.no_grad():
            alone = hf(ids[row][real][None]).logits.float()[0]
        assert_close_scaled(got[row][real], alone, 1e-4)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["qwen2_untied", "qwen2_tied", "qwen3_yarn"])
def test_gradients_match_transformers(checkpoints, name: str, device: str) -> None:
    path = checkpoints[name]
    ours = QwenModel.load(path, device=device)
    hf = hf_model(path, device=device)
    ids = random_ids(ours.config["vocab_size"], (2, 10), seed=2).to(device)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt without loss
    labels[1, 7:] = -100
    out = hf(ids, labels=labels)
    out.loss.backward()
    loss, grads = ours.nll_loss_and_grads(ids, labels)
    assert abs(loss - out.loss.item()) <= 1e-4 * abs(out.loss.item())
    hf_params = dict(hf.named_parameters())
    assert set(grads) == set(hf_params)
    for pname, g in grads.items():
        expected = hf_params[pname].grad
        assert_close_scaled(g, expected, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_logits_close_to_transformers_bfloat16(checkpoints, device: str) -> None:
    path = checkpoints["qwen3_head_dim"]
    ours = QwenModel.load(path, device=device, dtype="bfloat16")
    assert ours.dtype == torch.bfloat16
    hf = hf_model(path, dtype=torch.bfloat16, device=device)
    ids = random_ids(ours.config["vocab_size"], (2, 16), seed=3).to(device)
    with torch.no_grad():
        theirs = hf(ids).logits.float()
        full = hf_model(path, device=device)(ids).logits.float()
    got = ours.logits(ids)
    # bf16 has 8 bits of mantissa: compare at bf16 resolution, and check we are no farther from
    # the float32 model than transformers' own bf16 run is (with some slack).
    assert_close_scaled(got, theirs, 3e-2)
    ours_err = (got - full).abs().mean().item()
    hf_err = (theirs - full).abs().mean().item()
    assert ours_err <= 2 * hf_err + 1e-3


def test_save_round_trip_loads_in_transformers(checkpoints, tmp_path: Path) -> None:
    for name in ["qwen2_tied", "qwen3_yarn", "qwen2_sharded"]:
        src = checkpoints[name]
        ours = QwenModel.load(src)
        out = tmp_path / name
        ours.save(out)
        files = {p.name for p in out.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files, files
        assert "tokenizer_config.json" in files
        ids = random_ids(ours.config["vocab_size"], (1, 20), seed=4)
        with torch.no_grad():
            theirs = hf_model(out)(ids).logits.float()
        assert_close_scaled(ours.logits(ids), theirs, 1e-4)
        assert QwenModel.load(out).config["model_type"] == ours.config["model_type"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_save_over_itself_and_bf16_dtype(checkpoints, tmp_path: Path) -> None:
    src = tmp_path / "copy"
    shutil.copytree(checkpoints["qwen2_untied"], src)
    ours = QwenModel.load(src, dtype="bfloat16")
    ours.save(src)
    config = json.loads((src / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    back = transformers.AutoModelForCausalLM.from_pretrained(src)
    assert next(back.parameters()).dtype == torch.bfloat16
    assert (src / "tokenizer.json").is_file()


def test_parameters_and_metadata(checkpoints) -> None:
    ours = QwenModel.load(checkpoints["qwen2_tied"])
    hf = hf_model(checkpoints["qwen2_tied"])
    assert ours.parameter_names() == [n for n, _ in hf.named_parameters()]
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert ours.device == torch.device("cpu")
    assert ours.eos_token_ids == [2]
    hidden = ours.hidden_states(torch.tensor([[1, 2, 3]]))
    assert hidden.shape == (1, 3, ours.config["hidden_size"])


def test_missing_directory_and_config(tmp_path: Path) -> None:
    with pytest.raises(AsearcherIOError, match="config.json"):
        QwenModel.load(tmp_path / "nowhere")
    (tmp_path / "x").mkdir()
    with pytest.raises(AsearcherIOError, match=str(tmp_path / "x")):
        QwenModel.load(tmp_path / "x")


def test_unsupported_model_type(checkpoints, tmp_path: Path) -> None:
    path = tmp_path / "llama"
    shutil.copytree(checkpoints["qwen2_untied"], path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config\.json.*unsupported model_type `llama`"):
        QwenModel.load(path)


def test_wrong_tensor_shape_is_named(checkpoints, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "bad"
    shutil.copytree(checkpoints["qwen2_untied"], path)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(3, 5)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ModelError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*\[3, 5\]"):
        QwenModel.load(path)


def test_bad_inputs_raise_tensor_errors(checkpoints) -> None:
    ours = QwenModel.load(checkpoints["qwen2_untied"])
    with pytest.raises(TensorError, match="input_ids"):
        ours.logits(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(TensorError, match="input_ids"):
        ours.logits(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TensorError, match="attention_mask"):
        ours.logits(torch.zeros(2, 3, dtype=torch.int64), attention_mask=torch.ones(2, 4))
    with pytest.raises(TensorError, match="input_ids"):
        ours.logits(torch.full((1, 2), 10**6, dtype=torch.int64))
    with pytest.raises(TensorError, match="labels"):
        ours.nll_loss_and_grads(torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 2))
