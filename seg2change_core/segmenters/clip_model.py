"""A CLIP ViT image/text model in plain PyTorch, with open_clip's state_dict layout.

Hand-written because open_clip (through timm and torchvision) cannot be imported beside the CPU
build of torch these machines use, and because dense segmentation needs a modified last vision
block that open_clip does not offer. Parameter names are exactly open_clip's (and OpenAI's):
``visual.conv1.weight``, ``visual.class_embedding``, ``visual.positional_embedding``,
``visual.ln_pre``, ``visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``visual.ln_post``, ``visual.proj``,
``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks...``, ``ln_final``,
``text_projection`` and ``logit_scale``; so an open_clip or OpenAI CLIP ViT state_dict loads
strictly with :func:`load_clip`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from seg2change_core.errors import CheckpointError, ModelError

__all__ = [
    "CLIP",
    "CLIPConfig",
    "DenseAttention",
    "load_clip",
    "read_state_dict",
]

#: The last-block attention used for dense features: ``"qq+kk"`` is SCLIP's correlative
#: self-attention as SegEarth-OV uses it, ``softmax(q q^T) + softmax(k k^T)``; ``"vv"`` is
#: ``softmax(v v^T)``.
DenseAttention = Literal["qq+kk", "vv"]

# OpenAI's original checkpoints store these scalars beside the tensors.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class CLIPConfig:
    """Sizes of a CLIP ViT.

    Parameters
    ----------
    embed_dim
        Width of the joint image-text embedding.
    image_size, patch_size
        Input side in pixels and patch side; ``image_size`` must be a multiple of ``patch_size``.
    vision_width, vision_layers, vision_heads
        Vision transformer width, depth and attention heads.
    context_length, vocab_size
        Text tokens per prompt and vocabulary size.
    text_width, text_layers, text_heads
        Text transformer width, depth and attention heads.
    mlp_ratio
        Hidden width of the MLPs relative to the transformer width (4 in every CLIP).
    quick_gelu
        ``x * sigmoid(1.702 x)`` as in OpenAI's weights (True), or exact GELU as in most
        open_clip-trained weights (False). Not recorded in a state_dict: set it to match the weights.
    """

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    mlp_ratio: float = 4.0
    quick_gelu: bool = True

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise CheckpointError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for width, heads, tower in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
        ):
            if heads < 1 or width % heads:
                raise CheckpointError(f"{tower} width {width} is not divisible by {heads} heads")

    @property
    def grid_size(self) -> int:
        """Patches along each side of a model-sized image."""
        return self.image_size // self.patch_size

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, torch.Tensor],
        *,
        vision_heads: int | None = None,
        text_heads: int | None = None,
        quick_gelu: bool = True,
    ) -> CLIPConfig:
        """Infer the sizes from an open_clip-layout state_dict.

        Head counts are not visible in the tensors; by default they follow the CLIP convention of
        64-wide heads (``width // 64``, at least 1).

        Raises
        ------
        CheckpointError
            If a tensor needed for the inference is missing.
        """

        def get(key: str) -> torch.Tensor:
            if key not in state:
                raise CheckpointError(
                    f"tensor {key!r} is missing from the weights, so the CLIP sizes cannot be inferred; "
                    "is this an open_clip/OpenAI CLIP ViT state_dict?"
                )
            return state[key]

        def depth(prefix: str) -> int:
            blocks = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
            if not blocks:
                raise CheckpointError(f"no tensors under {prefix!r} in the weights")
            return len(blocks)

        conv = get("visual.conv1.weight")
        vision_width, patch = conv.shape[0], conv.shape[-1]
        tokens = get("visual.positional_embedding").shape[0] - 1
        grid = math.isqrt(tokens)
        if grid * grid != tokens:
            raise CheckpointError(
                f"visual.positional_embedding holds {tokens} patch positions, not a square grid"
            )
        text_width = get("ln_final.weight").shape[0]
        return cls(
            embed_dim=get("visual.proj").shape[1],
            image_size=grid * patch,
            patch_size=patch,
            vision_width=vision_width,
            vision_layers=depth("visual.transformer.resblocks."),
            vision_heads=vision_heads or max(1, vision_width // 64),
            context_length=get("positional_embedding").shape[0],
            vocab_size=get("token_embedding.weight").shape[0],
            text_width=text_width,
            text_layers=depth("transformer.resblocks."),
            text_heads=text_heads or max(1, text_width // 64),
            quick_gelu=quick_gelu,
        )


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation, ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names (packed q, k, v)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        b, h, n, d = out.shape
        merged: torch.Tensor = self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
        return merged

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))

    def dense(self, x: torch.Tensor, mode: DenseAttention) -> torch.Tensor:
        """Self-self attention for dense features (see :data:`DenseAttention`)."""
        q, k, v = self._qkv(x)
        scale = q.shape[-1] ** -0.5
        if mode == "qq+kk":
            weights = torch.softmax(q @ q.transpose(-1, -2) * scale, dim=-1) + torch.softmax(
                k @ k.transpose(-1, -2) * scale, dim=-1
            )
        elif mode == "vv":
            weights = torch.softmax(v @ v.transpose(-1, -2) * scale, dim=-1)
        else:
            raise ModelError(f"unknown dense attention {mode!r}; use 'qq+kk' or 'vv'")
        return self._merge(weights @ v)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, hidden),
                gelu=QuickGELU() if quick_gelu else nn.GELU(),
                c_proj=nn.Linear(hidden, width),
            )
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower (open_clip ``visual``)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.conv1 = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(config.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(
            width, config.vision_layers, config.vision_heads, config.mlp_ratio, config.quick_gelu
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, config.embed_dim))

    def _positional(self, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.positional_embedding
        if grid == (self.grid_size, self.grid_size):
            return pos
        # Same resampling as open_clip's resize_pos_embed: bicubic on the patch part.
        patch = pos[1:].reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])

    def embed(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens ``(B, 1 + N, width)`` after ``ln_pre``, and the patch grid ``(h, w)``.

        ``image`` is ``(B, 3, H, W)``, CLIP-normalised, with ``H`` and ``W`` multiples of the
        patch size; other sizes than the model's get a resampled positional embedding.
        """
        x = self.conv1(image)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional(grid).to(x.dtype)
        return self.ln_pre(x), grid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Global image embedding ``(B, embed_dim)`` (the CLS token, as CLIP was trained)."""
        x, _ = self.embed(image)
        x = self.transformer(x)
        embedding: torch.Tensor = self.ln_post(x[:, 0]) @ self.proj
        return embedding

    def dense(
        self, image: torch.Tensor, attention: DenseAttention = "qq+kk"
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Dense embeddings with the training-free last-block modification.

        All blocks but the last run unchanged. The last block keeps only its attention branch
        (no residual, no MLP, as ClearCLIP and SegEarth-OV), with the q-k attention replaced by
        ``attention``. Every token then goes through ``ln_post`` and ``proj``.

        Returns
        -------
        cls : torch.Tensor
            ``(B, embed_dim)`` the CLS token of the modified last block.
        patches : torch.Tensor
            ``(B, h * w, embed_dim)`` patch embeddings, row-major.
        grid : tuple of int
            ``(h, w)``.
        """
        x, grid = self.embed(image)
        blocks = self.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = cast(ResidualAttentionBlock, blocks[-1])
        x = last.attn.dense(last.ln_1(x), attention)
        x = self.ln_post(x) @ self.proj
        return x[:, 0], x[:, 1:], grid


class CLIP(nn.Module):
    """CLIP ViT with open_clip's parameter names (text tower at the top level, as open_clip)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.text_width))
        self.transformer = Transformer(
            config.text_width, config.text_layers, config.text_heads, config.mlp_ratio, config.quick_gelu
        )
        self.ln_final = nn.LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(torch.empty(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        causal = torch.full((config.context_length, config.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation (normal, std 0.02; LayerNorms at identity) for models built in tests."""
        for name, param in self.named_parameters():
            if ".ln_" in f".{name}":
                nn.init.ones_(param) if name.endswith("weight") else nn.init.zeros_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
            elif name != "logit_scale":
                nn.init.normal_(param, std=0.02)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Global image embeddings ``(B, embed_dim)`` of CLIP-normalised model-sized images."""
        embedding: torch.Tensor = self.visual(image)
        return embedding

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``(N, embed_dim)`` of token ids ``(N, context_length)``.

        The embedding is taken at each row's largest token id, which CLIP tokenizers reserve
        for the end-of-text token.
        """
        x = self.token_embedding(tokens) + self.positional_embedding.to(self.token_embedding.weight.dtype)
        mask = self.get_buffer("attn_mask").to(x.dtype)
        x = self.ln_final(self.transformer(x, mask))
        embedding: torch.Tensor = (
            x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection
        )
        return embedding


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a safetensors file, or a torch file with ``weights_only=True``.

    A torch checkpoint that wraps the tensors under ``"state_dict"`` or ``"model"`` is unwrapped,
    a ``module.`` prefix on every key is removed, and OpenAI's scalar entries
    (``input_resolution``, ``context_length``, ``vocab_size``) are dropped.

    Raises
    ------
    CheckpointError
        If the file does not exist, cannot be read, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"CLIP weights file {str(path)!r} does not exist; pass weights= the local path of a CLIP "
            "ViT state_dict (.safetensors, or a torch .pt/.pth/.bin)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every reader failure means the same thing to the user
        raise CheckpointError(
            f"cannot read CLIP weights {str(path)!r}: {exc}. Give a safetensors file or a torch "
            "state_dict saved with torch.save (loadable with weights_only=True)"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"CLIP weights {str(path)!r} hold a {type(obj).__name__}, not a state_dict")
    state = {str(k): v for k, v in obj.items() if k not in _OPENAI_EXTRA_KEYS}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise CheckpointError(
            f"CLIP weights {str(path)!r} are not a state_dict of tensors"
            + (f" (entry {bad[0]!r} is not a tensor)" if bad else " (no entries)")
        )
    return state


def load_clip(
    weights: str | Path,
    config: CLIPConfig | None = None,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    quick_gelu: bool = True,
) -> CLIP:
    """Build a :class:`CLIP` and load its weights strictly.

    Parameters
    ----------
    weights
        Local path of the state_dict (see :func:`read_state_dict`).
    config
        Model sizes; inferred from the weights when None (see :meth:`CLIPConfig.from_state_dict`;
        ``vision_heads``, ``text_heads`` and ``quick_gelu`` only apply then).

    Returns
    -------
    CLIP
        In eval mode, float32, on the CPU.

    Raises
    ------
    CheckpointError
        If the file is missing or unreadable, or the first tensor that is missing, has the wrong
        shape, or is not expected by the model (named in the message).
    """
    state = read_state_dict(weights)
    if config is None:
        config = CLIPConfig.from_state_dict(
            state, vision_heads=vision_heads, text_heads=text_heads, quick_gelu=quick_gelu
        )
    model = CLIP(config)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(
                f"tensor {key!r} is missing from {str(weights)!r}; the file does not fit a CLIP with {config}"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"tensor {key!r} has shape {tuple(state[key].shape)} in {str(weights)!r} but the model "
                f"expects {tuple(tensor.shape)}; the file does not fit a CLIP with {config}"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"tensor {unexpected[0]!r} in {str(weights)!r} is not part of a CLIP ViT "
            f"({len(unexpected)} unexpected in all); is this an open_clip ViT checkpoint?"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()
