"""Training-free open-vocabulary segmentation with a CLIP ViT, in the manner of SegEarth-OV.

Per class, the text embeddings of every (template, synonym) pair are L2-normalised, averaged and
normalised again. Per window of the model's image size, the vision tower gives dense patch
embeddings with SegEarth-OV's training-free changes (see :meth:`.clip_model.VisionTransformer.dense`):

1. the last block's q-k attention is replaced by self-self attention, by default SCLIP's
   ``softmax(q q^T) + softmax(k k^T)`` (``attention="qq+kk"``, as SegEarth-OV); ``"vv"`` uses
   ``softmax(v v^T)``; the last block's residual and MLP are dropped (ClearCLIP);
2. global bias alleviation: ``f_patch / |f_patch| - lambda * f_cls / |f_cls|`` with
   ``lambda = cls_lambda = 0.3``; its dot product with a unit text embedding equals SegEarth-OV's
   ``cos(patch, text) - 0.3 cos(cls, text)``.

Logits are ``logit_scale * (feature . text)``, bilinearly upsampled from the patch grid to the
window's pixels, summed over the sliding windows and divided by the number of windows covering
each pixel. The averaging is within one image (one pipeline tile); the pipeline blends tiles with
probabilities. A softmax over classes gives the probabilities.

Tokenizers are behind the small :class:`Tokenizer` Protocol: :class:`BPETokenizer` is CLIP's
byte-pair tokenizer reading the user's ``bpe_simple_vocab_16e6.txt.gz`` (it cannot be shipped or
downloaded here), and :class:`ByteTokenizer` is a deterministic UTF-8 byte tokenizer for models
that tests build themselves.
"""

from __future__ import annotations

import gzip
import html
import re
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from seg2change_core.errors import CheckpointError, SegmenterError
from seg2change_core.prompts import PromptSet
from seg2change_core.segmenters import check_image, register_segmenter
from seg2change_core.segmenters.clip_model import CLIP, CLIPConfig, DenseAttention, load_clip

__all__ = [
    "DEFAULT_TEMPLATES",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "BPETokenizer",
    "ByteTokenizer",
    "CLIPSegmenter",
    "Tokenizer",
]

#: Prompt templates averaged into each class embedding; ``{}`` is replaced by a class name.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a satellite image of a {}.",
    "a satellite image of the {}.",
    "an aerial image of a {}.",
    "an aerial photo of the {}.",
    "a remote sensing image of a {}.",
    "a top-down view of a {}.",
    "a photo of a {}.",
    "there is a {} in the scene.",
)

#: CLIP's image normalisation (OpenAI), applied by the segmenter to RGB in 0..1.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class Tokenizer(Protocol):
    """Turns texts into CLIP token ids.

    ``tokenizer(texts, context_length)`` returns an int64 tensor ``(len(texts), context_length)``:
    a start token, the text's tokens and an end token, zero-padded, truncated to
    ``context_length`` with the end token kept last. The end token must have the largest id in
    every row (CLIP pools the text at the argmax position).
    """

    def __call__(self, texts: Sequence[str], context_length: int) -> torch.Tensor: ...


def _clean(text: str) -> str:
    # open_clip also runs ftfy.fix_text; class names are plain text, so unescaping suffices.
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip().lower()


def _pack(rows: list[list[int]], context_length: int, eot: int) -> torch.Tensor:
    out = torch.zeros(len(rows), context_length, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) > context_length:
            row = row[:context_length]
            row[-1] = eot
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class ByteTokenizer:
    """Deterministic UTF-8 byte tokenizer for small test models.

    Ids: 0 padding, ``1 + byte`` for each byte of the lower-cased text, ``vocab_size - 2`` start,
    ``vocab_size - 1`` end.

    Parameters
    ----------
    vocab_size
        At least 259.
    """

    def __init__(self, vocab_size: int = 259) -> None:
        if vocab_size < 259:
            raise SegmenterError(f"ByteTokenizer needs vocab_size >= 259, got {vocab_size}")
        self.vocab_size = vocab_size
        self.sot, self.eot = vocab_size - 2, vocab_size - 1

    def __call__(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        rows = [[self.sot, *(b + 1 for b in _clean(t).encode("utf-8")), self.eot] for t in texts]
        return _pack(rows, context_length, self.eot)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character map."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


# CLIP splits on \p{L}+, \p{N} and runs of other non-space characters; `re` spells these
# without the third-party `regex` module.
_PATTERN = re.compile(
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
    re.IGNORECASE,
)


class BPETokenizer:
    """CLIP's byte-pair-encoding tokenizer (open_clip ``SimpleTokenizer``) from a local vocab file.

    Parameters
    ----------
    path
        ``bpe_simple_vocab_16e6.txt.gz`` as shipped with open_clip/OpenAI CLIP (gzip or plain
        text): a header line, then one merge (``"a b"``) per line. Only the first 48,894 merges are
        used, as in CLIP, which gives the 49,408-token vocabulary.

    Notes
    -----
    Differences from open_clip: ftfy's mojibake repair is not applied, and ``\\p{L}``/``\\p{N}``
    are approximated with Python's ``re`` classes; neither matters for plain class names.
    """

    MAX_MERGES = 49152 - 256 - 2

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            lines = raw.decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
            raise SegmenterError(
                f"cannot read the BPE vocabulary {str(path)!r}: {exc}; pass tokenizer= the path of "
                "open_clip's bpe_simple_vocab_16e6.txt.gz"
            ) from exc
        merges = [tuple(line.split()) for line in lines[1 : self.MAX_MERGES + 1] if line.strip()]
        if any(len(m) != 2 for m in merges):
            raise SegmenterError(f"{str(path)!r} is not a BPE merges file (lines of two symbols)")
        self.byte_encoder = _bytes_to_unicode()
        base = list(self.byte_encoder.values())
        vocab = [*base, *(c + "</w>" for c in base), *("".join(m) for m in merges)]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        self.vocab_size = len(vocab)
        self._bpe = lru_cache(maxsize=10_000)(self._bpe_uncached)

    def _bpe_uncached(self, token: str) -> tuple[str, ...]:
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start and end tokens."""
        ids: list[int] = []
        for piece in _PATTERN.findall(_clean(text)):
            if piece in ("<start_of_text>", "<end_of_text>"):
                ids.append(self.encoder[piece])
                continue
            token = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token))
        return ids

    def __call__(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        rows = [[self.sot, *self.encode(t), self.eot] for t in texts]
        return _pack(rows, context_length, self.eot)


@register_segmenter("clip")
class CLIPSegmenter:
    """Dense open-vocabulary segmentation with a CLIP ViT (training-free, SegEarth-OV style).

    Parameters
    ----------
    weights
        Local path of an open_clip/OpenAI CLIP ViT state_dict: ``.safetensors`` (preferred) or a
        torch file loadable with ``weights_only=True``. Required.
    tokenizer
        A :class:`Tokenizer`, or the path of CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (read with
        :class:`BPETokenizer`). Required.
    config
        Model sizes; inferred from the weights when None (heads ``width // 64``).
    quick_gelu
        Activation of the weights when ``config`` is None: True for OpenAI's, False for most
        open_clip-trained ones.
    templates
        Prompt templates with one ``{}``; :data:`DEFAULT_TEMPLATES` by default.
    stride
        Sliding-window stride in pixels; half the model's image size by default.
    cls_lambda
        Weight of the global (CLS) bias subtracted from the patch features; 0.3 as SegEarth-OV.
    logit_scale
        Multiplier of the cosine similarities before the softmax; 50 as SegEarth-OV. None uses
        the checkpoint's ``exp(logit_scale)`` (100 for OpenAI CLIP).
    attention
        Last-block attention: ``"qq+kk"`` (default) or ``"vv"``.
    upscale
        Resize factor applied to the image before the windows are cut (e.g. 2-4 for 10 m
        imagery, whose objects are smaller than CLIP's training images show); results come back
        at the input resolution.
    batch_size
        Windows per forward pass.
    device
        Where the model runs; results are returned on the input's device.

    Raises
    ------
    CheckpointError
        If ``weights`` is missing, unreadable or does not fit a CLIP ViT.
    SegmenterError
        If no tokenizer is given or an option is out of range.
    """

    name = "clip"
    bands: tuple[str, ...] = ("red", "green", "blue")
    normalisation = (
        "RGB floats in 0..1 as displayed (reflectance imagery: stretch, e.g. times 3.5, and clip "
        "to 0..1 first); CLIP's mean/std normalisation is applied inside"
    )

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        tokenizer: Tokenizer | str | Path | None = None,
        config: CLIPConfig | None = None,
        quick_gelu: bool = True,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        stride: int | None = None,
        cls_lambda: float = 0.3,
        logit_scale: float | None = 50.0,
        attention: DenseAttention = "qq+kk",
        upscale: float = 1.0,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
    ) -> None:
        if weights is None:
            raise CheckpointError(
                "the clip segmenter needs weights=: the local path of a CLIP ViT state_dict "
                "(e.g. open_clip ViT-B-16 'openai' saved as safetensors); nothing is downloaded"
            )
        if tokenizer is None:
            raise SegmenterError(
                "the clip segmenter needs tokenizer=: the path of CLIP's bpe_simple_vocab_16e6.txt.gz "
                "(shipped with open_clip) or a Tokenizer object"
            )
        if attention not in ("qq+kk", "vv"):
            raise SegmenterError(f"attention must be 'qq+kk' or 'vv', got {attention!r}")
        templates = tuple(templates)
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise SegmenterError(f"each template must contain '{{}}' exactly once, got {templates}")
        if upscale <= 0 or batch_size < 1:
            raise SegmenterError("upscale must be positive and batch_size at least 1")
        self.device = torch.device(device)
        self.model: CLIP = load_clip(weights, config, quick_gelu=quick_gelu).to(self.device)
        self.config = self.model.config
        self.window = self.config.image_size
        self.stride = stride if stride is not None else max(1, self.window // 2)
        if not 0 < self.stride <= self.window:
            raise SegmenterError(f"stride must lie in 1..{self.window} (the window), got {self.stride}")
        self.tokenizer: Tokenizer = (
            BPETokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        )
        self.templates = templates
        self.cls_lambda = cls_lambda
        self.logit_scale = logit_scale
        self.attention: DenseAttention = attention
        self.upscale = upscale
        self.batch_size = batch_size
        self._mean = torch.tensor(OPENAI_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(OPENAI_STD, device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[tuple[str, ...], ...], torch.Tensor] = {}

    @torch.inference_mode()
    def text_features(self, classes: PromptSet) -> torch.Tensor:
        """Unit class embeddings ``(K, embed_dim)``, in channel order (background first).

        Raises
        ------
        SegmenterError
            If the tokenizer gives ids outside the model's vocabulary.
        """
        key = tuple(p.names for p in classes.prompts)
        if key not in self._text_cache:
            rows = []
            for prompt in classes.prompts:
                texts = [t.format(n) for n in prompt.names for t in self.templates]
                tokens = self.tokenizer(texts, self.config.context_length)
                if int(tokens.max()) >= self.config.vocab_size or int(tokens.min()) < 0:
                    raise SegmenterError(
                        f"the tokenizer gave ids up to {int(tokens.max())} but the model's vocabulary has "
                        f"{self.config.vocab_size} tokens: tokenizer and weights do not belong together"
                    )
                feats = F.normalize(self.model.encode_text(tokens.to(self.device)), dim=-1)
                rows.append(F.normalize(feats.mean(0), dim=-1))
            self._text_cache[key] = torch.stack(rows)
        return self._text_cache[key]

    def _scale(self) -> float:
        if self.logit_scale is not None:
            return self.logit_scale
        return float(self.model.logit_scale.exp())

    @torch.inference_mode()
    def window_logits(self, window: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, h, w)`` of windows ``(B, 3, h, w)`` (RGB 0..1), at pixel resolution.

        Windows whose sides are not multiples of the patch size are padded at the bottom and
        right, and the padding is cropped off the logits again.
        """
        h, w = window.shape[-2:]
        p = self.config.patch_size
        x = (window.to(self.device, torch.float32) - self._mean) / self._std
        x = F.pad(x, (0, -w % p, 0, -h % p))
        cls, patches, grid = self.model.visual.dense(x, self.attention)
        feats = F.normalize(patches, dim=-1) - self.cls_lambda * F.normalize(cls, dim=-1)[:, None]
        logits = self._scale() * feats @ text.T
        logits = logits.transpose(1, 2).reshape(x.shape[0], -1, *grid)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    def _starts(self, size: int) -> list[int]:
        if size <= self.window:
            return [0]
        n = (size - self.window + self.stride - 1) // self.stride + 1
        return [min(i * self.stride, size - self.window) for i in range(n)]

    @torch.inference_mode()
    def logits(self, image: torch.Tensor, classes: PromptSet) -> torch.Tensor:
        """Sliding-window logits ``(B, K, H, W)``, averaged where windows overlap.

        Windows are the model's image size (smaller only when the image is), placed every
        ``stride`` pixels with the last one flush with the far edge.
        """
        check_image(image, self.bands, self.name)
        batch, _, height, width = image.shape
        if height == 0 or width == 0:
            raise SegmenterError(f"empty image of shape {tuple(image.shape)}")
        text = self.text_features(classes)
        x = image.to(self.device, torch.float32)
        if self.upscale != 1.0:
            size = (max(1, round(height * self.upscale)), max(1, round(width * self.upscale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        big_h, big_w = x.shape[-2:]
        win_h, win_w = min(self.window, big_h), min(self.window, big_w)
        boxes = [(y, xx) for y in self._starts(big_h) for xx in self._starts(big_w)]
        total = x.new_zeros(batch, text.shape[0], big_h, big_w)
        count = x.new_zeros(1, 1, big_h, big_w)
        per_pass = max(1, self.batch_size // batch)
        for first in range(0, len(boxes), per_pass):
            chunk = boxes[first : first + per_pass]
            crops = torch.cat([x[:, :, y : y + win_h, xx : xx + win_w] for y, xx in chunk])
            out = self.window_logits(crops, text).split(batch)
            for (y, xx), logits in zip(chunk, out, strict=True):
                total[:, :, y : y + win_h, xx : xx + win_w] += logits
                count[:, :, y : y + win_h, xx : xx + win_w] += 1
        total /= count
        if (big_h, big_w) != (height, width):
            total = F.interpolate(total, size=(height, width), mode="bilinear", align_corners=False)
        return total.to(image.device)

    def segment(self, image: torch.Tensor, classes: PromptSet) -> torch.Tensor:
        """Class probabilities ``(B, K, H, W)``: the softmax of :meth:`logits` over classes.

        Parameters
        ----------
        image
            ``(B, 3, H, W)`` RGB floats in 0..1 (see :attr:`normalisation`), any size.
        classes
            Free-form class names; the background, when given, is encoded like any class.

        Returns
        -------
        torch.Tensor
            Probabilities in the image's dtype, summing to 1 over classes.
        """
        return torch.softmax(self.logits(image, classes), dim=1).to(image.dtype)
