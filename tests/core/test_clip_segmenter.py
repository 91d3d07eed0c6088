"""CLIP segmenter: open_clip layout, strict loading, tokenizers, sliding windows, a model built to agree."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from seg2change_core.errors import CheckpointError, SegmenterError
from seg2change_core.prompts import PromptSet
from seg2change_core.segmenters import Segmenter, get_segmenter
from seg2change_core.segmenters.clip import (
    OPENAI_MEAN,
    OPENAI_STD,
    BPETokenizer,
    ByteTokenizer,
    CLIPSegmenter,
    Tokenizer,
)
from seg2change_core.segmenters.clip_model import CLIP, CLIPConfig, ResidualAttentionBlock, load_clip

CONFIG = CLIPConfig(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    vision_heads=1,
    context_length=16,
    vocab_size=300,
    text_width=32,
    text_layers=2,
    text_heads=1,
)
TOKENIZER = ByteTokenizer(vocab_size=300)
PROMPTS = PromptSet.from_string("building,roof;water,river;tree", background="background")


def random_model(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(CONFIG).eval()


def save(model: CLIP, path: Path) -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def segmenter(path: Path, **kwargs: object) -> CLIPSegmenter:
    return CLIPSegmenter(path, tokenizer=TOKENIZER, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(random_model(), tmp_path_factory.mktemp("clip") / "clip.safetensors")


# ----------------------------------------------------------------------------- model and loading


def test_state_dict_has_open_clip_names_and_sizes_are_inferred() -> None:
    state = random_model().state_dict()
    for key in (
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.ln_pre.weight",
        "visual.transformer.resblocks.1.ln_1.bias",
        "visual.transformer.resblocks.1.attn.in_proj_weight",
        "visual.transformer.resblocks.1.attn.in_proj_bias",
        "visual.transformer.resblocks.1.attn.out_proj.weight",
        "visual.transformer.resblocks.1.ln_2.weight",
        "visual.transformer.resblocks.1.mlp.c_fc.weight",
        "visual.transformer.resblocks.1.mlp.c_proj.bias",
        "visual.ln_post.weight",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "transformer.resblocks.1.attn.in_proj_weight",
        "ln_final.weight",
        "text_projection",
        "logit_scale",
    ):
        assert key in state, key
    assert "attn_mask" not in state
    assert state["visual.proj"].shape == (64, 32) and state["text_projection"].shape == (32, 32)
    assert CLIPConfig.from_state_dict(state) == CONFIG


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    model = random_model(3)
    loaded = load_clip(save(model, tmp_path / f"w{suffix}"))
    assert loaded.config == CONFIG
    image = torch.randn(2, 3, 32, 32)
    tokens = TOKENIZER(["a roof", "a river"], CONFIG.context_length)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(image), model.encode_image(image))
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens))


def test_wrapped_torch_checkpoint_with_openai_scalars_loads(tmp_path: Path) -> None:
    state = random_model().state_dict()
    wrapped = {"state_dict": {**state, "context_length": 16}}
    torch.save(wrapped, tmp_path / "w.pt")
    assert load_clip(tmp_path / "w.pt").config == CONFIG


def _broken(tmp_path: Path, edit: str) -> Path:
    state = dict(random_model().state_dict())
    if edit == "missing":
        del state["visual.ln_post.bias"]
    elif edit == "shape":
        state["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(100, 32)
    elif edit == "unexpected":
        state["visual.attnpool.weight"] = torch.zeros(3)
    return save(CLIP(CONFIG), tmp_path / "ok.safetensors") if edit == "none" else _write(state, tmp_path)


def _write(state: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("missing", "'visual.ln_post.bias' is missing"),
        ("shape", "'transformer.resblocks.0.mlp.c_fc.weight' has shape (100, 32)"),
        ("unexpected", "'visual.attnpool.weight'"),
    ],
)
def test_mismatched_weights_name_the_first_bad_tensor(tmp_path: Path, edit: str, named: str) -> None:
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_clip(_broken(tmp_path, edit), CONFIG)


def test_unreadable_weights_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        segmenter(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_clip(tmp_path / "junk.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_clip(tmp_path / "list.pt")
    state = {k: v for k, v in random_model().state_dict().items() if k != "visual.proj"}
    with pytest.raises(CheckpointError, match="'visual.proj' is missing"):
        load_clip(_write(state, tmp_path))
    with pytest.raises(CheckpointError, match="weights="):
        CLIPSegmenter(tokenizer=TOKENIZER)


# ----------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_pads_truncates_and_keeps_the_end_token_largest() -> None:
    tok = ByteTokenizer(vocab_size=300)
    assert isinstance(tok, Tokenizer)
    ids = tok(["Ab", "x" * 40], 8)
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    assert ids[0].tolist() == [298, ord("a") + 1, ord("b") + 1, 299, 0, 0, 0, 0]
    assert ids[1, -1] == 299 and ids[1].argmax() == 7
    with pytest.raises(SegmenterError):
        ByteTokenizer(200)


def test_bpe_tokenizer_applies_merges_in_rank_order(tmp_path: Path) -> None:
    # "g r" outranks "r e", so "green" merges g+r first; "red" has no g and merges r+e.
    merges = "#version: 0.2\ng r\ngr e\nr e\nre d</w>\ne n</w>\ngre en</w>\n"
    path = tmp_path / "bpe.txt.gz"
    path.write_bytes(gzip.compress(merges.encode()))
    tok = BPETokenizer(path)
    assert tok.vocab_size == 512 + 6 + 2
    assert tok.encode("red") == [tok.encoder["red</w>"]]
    assert tok.encode(" GREEN  red") == [tok.encoder["green</w>"], tok.encoder["red</w>"]]
    # "rent": r e -> re; then no merge for (re, n) or (n, t</w>)
    assert tok.encode("rent") == [tok.encoder[t] for t in ("re", "n", "t</w>")]
    assert tok.encode("a2,") == [tok.encoder["a</w>"], tok.encoder["2</w>"], tok.encoder[",</w>"]]
    ids = tok(["red green"], 4)
    assert ids[0].tolist() == [tok.sot, tok.encoder["red</w>"], tok.encoder["green</w>"], tok.eot]
    assert tok.eot == tok.vocab_size - 1
    assert BPETokenizer(tmp_path / "bpe.txt.gz").encode("green") == tok.encode("green")
    with pytest.raises(SegmenterError, match="bpe_simple_vocab"):
        BPETokenizer(tmp_path / "none.gz")


def test_tokenizer_that_does_not_fit_the_vocabulary_is_refused(weights: Path) -> None:
    seg = CLIPSegmenter(weights, tokenizer=ByteTokenizer(400))
    with pytest.raises(SegmenterError, match="do not belong together"):
        seg.segment(torch.rand(1, 3, 32, 32), PROMPTS)
    with pytest.raises(SegmenterError, match="tokenizer="):
        CLIPSegmenter(weights)


# ----------------------------------------------------------------------------- dense inference


def test_segment_shapes_probabilities_and_determinism(weights: Path) -> None:
    seg = get_segmenter("clip", weights=weights, tokenizer=TOKENIZER)
    assert isinstance(seg, Segmenter) and seg.bands == ("red", "green", "blue")
    image = torch.rand(2, 3, 45, 70, generator=torch.Generator().manual_seed(1))
    probs = seg.segment(image, PROMPTS)
    assert probs.shape == (2, 4, 45, 70) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 45, 70))
    assert torch.equal(probs, seg.segment(image, PROMPTS))
    assert torch.equal(probs, segmenter(weights).segment(image, PROMPTS))
    assert torch.equal(probs[1:], seg.segment(image[1:], PROMPTS))
    small = seg.segment(image[:, :, :20, :27], PROMPTS)
    assert small.shape == (2, 4, 20, 27) and torch.isfinite(small).all()
    assert seg.segment(image, PROMPTS.__class__.from_string("a;b")).shape == (2, 2, 45, 70)
    with pytest.raises(SegmenterError, match=r"\(B, 3, H, W\)"):
        seg.segment(torch.rand(1, 4, 32, 32), PROMPTS)


def test_upscale_returns_the_input_resolution(weights: Path) -> None:
    probs = segmenter(weights, upscale=2.0).segment(torch.rand(1, 3, 40, 24), PROMPTS)
    assert probs.shape == (1, 4, 40, 24)


def test_constant_image_gives_constant_output_without_seams(tmp_path: Path) -> None:
    model = random_model(5)
    with torch.no_grad():
        model.visual.positional_embedding.zero_()
    seg = segmenter(save(model, tmp_path / "w.safetensors"), stride=12)
    image = torch.empty(1, 3, 70, 83)
    image[:, 0], image[:, 1], image[:, 2] = 0.3, 0.6, 0.2
    logits = seg.logits(image, PROMPTS)
    reference = logits[:, :, :1, :1]
    torch.testing.assert_close(logits, reference.expand_as(logits), atol=1e-5, rtol=0)
    assert float(logits.std(1).mean()) > 1e-3  # the classes themselves differ


@pytest.mark.parametrize(("height", "width", "stride"), [(64, 64, 16), (50, 70, 16), (32, 48, 32)])
def test_sliding_window_averages_the_overlapping_windows(
    weights: Path, height: int, width: int, stride: int
) -> None:
    seg = segmenter(weights, stride=stride, batch_size=3)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(2))
    text = seg.text_features(PROMPTS)

    def starts(size: int) -> list[int]:
        return sorted({*range(0, size - 32, stride), size - 32})

    total = torch.zeros(1, 4, height, width)
    count = torch.zeros(height, width)
    for y in starts(height):
        for x in starts(width):
            total[:, :, y : y + 32, x : x + 32] += seg.window_logits(
                image[:, :, y : y + 32, x : x + 32], text
            )
            count[y : y + 32, x : x + 32] += 1
    torch.testing.assert_close(seg.logits(image, PROMPTS), total / count, atol=1e-5, rtol=1e-5)
    # Overlapping windows disagree (context differs), so the averaging is not vacuous.
    a = seg.window_logits(image[:, :, :32, :32], text)[..., 16:32, 16:32]
    b = seg.window_logits(image[:, :, 16:48, 16:48], text)[..., :16, :16]
    assert not torch.allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- a model built to agree

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def agreeing_model() -> CLIP:
    """A CLIP whose dense feature of a flat colour equals the text embedding of its name.

    Vision: ``conv1`` averages each colour channel over the patch into channels 0..2; all but
    the last block are identities (zero ``out_proj`` and ``c_proj``); the last block's q, k and v
    are identities, so self-self attention gathers same-coloured patches. A patch feature before
    ``proj`` is then ``u = layer_norm(z)`` of its CLIP-normalised colour ``z``; ``proj`` is solved so
    that ``u_colour @ proj`` equals the (random) text embedding of the colour's name.
    """
    model = random_model(7)
    width = CONFIG.vision_width
    v = model.visual
    with torch.no_grad():
        v.conv1.weight.zero_()
        for c in range(3):
            v.conv1.weight[c, c] = 1.0 / CONFIG.patch_size**2
        v.class_embedding.zero_()
        v.positional_embedding.zero_()
        for name, p in v.transformer.named_parameters():
            if ".attn.out_proj." in name or ".mlp.c_proj." in name:
                p.zero_()
        last = cast(ResidualAttentionBlock, v.transformer.resblocks[-1])
        last.attn.in_proj_weight.copy_(torch.eye(width).repeat(3, 1))
        last.attn.in_proj_bias.zero_()
        last.attn.out_proj.weight.copy_(torch.eye(width))
        model.text_projection.copy_(torch.eye(CONFIG.text_width))
        text = F.normalize(model.encode_text(TOKENIZER(list(COLOURS), CONFIG.context_length)), dim=-1)
        mean, std = torch.tensor(OPENAI_MEAN), torch.tensor(OPENAI_STD)
        u = torch.zeros(3, width)
        for i, rgb in enumerate(COLOURS.values()):
            u[i, :3] = (torch.tensor(rgb) - mean) / std
        u = F.layer_norm(u, (width,))
        v.proj.copy_(torch.linalg.pinv(u) @ text)
    return model


@pytest.mark.parametrize("attention", ["qq+kk", "vv"])
def test_model_built_to_agree_labels_each_colour_with_its_name(tmp_path: Path, attention: str) -> None:
    seg = segmenter(save(agreeing_model(), tmp_path / "agree.pt"), templates=("{}",), attention=attention)
    prompts = PromptSet.from_string("red;green;blue")
    image = torch.zeros(1, 3, 64, 96)
    image[:, 0, :, :48] = 1.0  # left half red
    image[:, 1, :32, 48:] = 1.0  # top right green
    image[:, 2, 32:, 48:] = 1.0  # bottom right blue
    labels = seg.segment(image, prompts).argmax(1)[0]
    assert (labels[:, :40] == 0).all()
    assert (labels[:24, 56:] == 1).all()
    assert (labels[40:, 56:] == 2).all()
    flat = seg.segment(torch.zeros(1, 3, 32, 32).index_fill_(1, torch.tensor([2]), 1.0), prompts)
    assert (flat.argmax(1) == 2).all() and float(flat[:, 2].min()) > 0.5
