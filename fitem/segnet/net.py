"""A small 4-level UNet and its checkpoint format.

The network maps an aligned face crop (3 channels: the image; or 6: the image
and the current render of the fitted model, as in Li et al. 2021) to one logit
per pixel of "visible face". It is a plain UNet (Ronneberger et al. 2015):
four resolution levels of two 3×3 convolutions + batch norm + ReLU, max-pool
down, bilinear up + concatenation, widths ``base · (1, 2, 4, 8)`` and a
bottleneck of ``16 · base`` at 1/16 of the input (``base=16`` ≈ 1.9 M
parameters). Inputs whose side is not a multiple of 16 are padded and the
output cropped back.

Checkpoints are a :func:`torch.save` of plain containers only — ``{"format",
"state_dict", "metadata"}`` with JSON-able metadata — written atomically and
read with ``torch.load(..., weights_only=True)`` (no pickle of code).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fitem._files import atomic_write_bytes
from fitem.errors import ConfigError, InvalidInputError, ShapeError

__all__ = ["UNet", "SegNet", "save_segnet", "load_segnet", "CHECKPOINT_FORMAT", "INPUT_MODES"]

#: Version of the checkpoint layout written by :func:`save_segnet`.
CHECKPOINT_FORMAT = 1
#: Supported input modes: 3 = image only, 6 = image + render.
INPUT_MODES = (3, 6)
_KIND = "fitem-segnet"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """UNet with ``levels`` resolution levels; logits of "visible face" per pixel.

    Args:
        in_channels: 3 (image) or 6 (image + render), colours in [0, 1].
        base: channels of the first level (doubled per level).
        levels: number of down-sampling steps (4 as in the seed paper's UNet).

    Shapes:
        ``forward(x)``: ``x`` ``(B, in_channels, H, W)`` float → ``(B, 1, H, W)`` logits.

    Example:
        >>> net = UNet(3, base=8)
        >>> net(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, in_channels: int = 3, base: int = 16, levels: int = 4) -> None:
        super().__init__()
        if in_channels not in INPUT_MODES:
            raise ConfigError(f"in_channels must be 3 (image) or 6 (image + render), got {in_channels!r}")
        if not (isinstance(base, int) and base >= 1) or not (isinstance(levels, int) and 1 <= levels <= 6):
            raise ConfigError(f"base must be an integer >= 1 and levels in 1..6, got base={base!r}, levels={levels!r}")
        self.in_channels, self.base, self.levels = int(in_channels), int(base), int(levels)
        widths = [base * 2 ** i for i in range(levels + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_block(cin, w))
            cin = w
        self.bottom = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            self.up.append(_block(widths[i + 1] + widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], 1, 1)
        # mean centring of the [0, 1] inputs, part of the model (no pre-processing to forget)
        self.register_buffer("input_mean", torch.full((1, in_channels, 1, 1), 0.5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"x: expected shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2 ** self.levels
        ph, pw = (-h) % m, (-w) % m
        y = x - self.input_mean
        if ph or pw:
            y = F.pad(y, (0, pw, 0, ph))
        skips = []
        for blk in self.down:
            y = blk(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottom(y)
        for blk, skip in zip(self.up, reversed(skips)):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = blk(torch.cat([y, skip], 1))
        return self.head(y)[..., :h, :w]


@dataclass
class SegNet:
    """A trained UNet with the metadata that says how to feed it.

    Attributes:
        net: the :class:`UNet` (in eval mode after loading).
        crop_size: side of the aligned crops it was trained on (pixels).
        metadata: JSON-able dict (``in_channels``, ``base``, ``levels``, ``crop_size``,
            ``config`` of the distillation, ``fit_config`` and ``model_checksum`` of the
            annotation it learned from, ``fitem_version``, ``epoch``, ``val`` scores, ...).

    Example:
        >>> sn = load_segnet("net.pt")                       # doctest: +SKIP
        >>> prob = sn.predict(crops)   # (B, S, S) in [0, 1]  # doctest: +SKIP
    """

    net: UNet
    crop_size: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return self.net.in_channels

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, renders: np.ndarray | torch.Tensor | None = None
                ) -> np.ndarray:
        """Probability of visible face on crops.

        Args:
            images: ``(B, S, S, 3)`` or ``(S, S, 3)`` crops, float in [0, 1] or uint8.
            renders: the same shape, the model's render of each crop (6-channel nets only).

        Returns:
            ``(B, S, S)`` (or ``(S, S)``) float32 probabilities in [0, 1].
        """
        single = np.ndim(images) == 3
        x = _as_nchw(images, "images")
        if self.in_channels == 6:
            if renders is None:
                raise ConfigError("this segmentation net takes image + render (6 channels): pass renders=...")
            r = _as_nchw(renders, "renders")
            if r.shape != x.shape:
                raise ShapeError(f"renders: expected shape {tuple(x.shape)} like images, got {tuple(r.shape)}")
            x = torch.cat([x, r], 1)
        elif renders is not None:
            raise ConfigError("this segmentation net takes the image only (3 channels); do not pass renders")
        self.net.eval()
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU
        p = torch.sigmoid(self.net(x)).squeeze(1).float().cpu().numpy()
        return p[0] if single else p


def _as_nchw(a, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ShapeError(f"{name}: expected shape (B, S, S, 3) or (S, S, 3), got {tuple(t.shape)}")
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return t.permute(0, 3, 1, 2).contiguous()


def save_segnet(net: UNet, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write a checkpoint atomically: ``{"format", "kind", "state_dict", "metadata"}``.

    ``metadata`` must be JSON-able (it is checked); ``in_channels``, ``base`` and
    ``levels`` are filled in from ``net``.

    Example:
        >>> save_segnet(UNet(3), "net.pt", {"crop_size": 224})   # doctest: +SKIP
    """
    meta = {**metadata, "in_channels": net.in_channels, "base": net.base, "levels": net.levels}
    if "crop_size" not in meta:
        raise ConfigError("metadata must hold crop_size (the side of the crops the net was trained on)")
    try:
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"checkpoint metadata must be JSON-able: {exc}") from exc
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "kind": _KIND, "state_dict": state, "metadata": meta}, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_segnet(path: "str | Path | SegNet", *, in_channels: int | None = None,
                device: "str | torch.device" = "cpu") -> SegNet:
    """Read a checkpoint written by :func:`save_segnet` (``weights_only=True``: no code is unpickled).

    Args:
        path: the ``.pt`` file (a :class:`SegNet` passes through, moved to ``device``).
        in_channels: the input mode the caller needs (3 or 6); ``None`` accepts either.
        device: where to put the network.

    Raises:
        fitem.errors.InvalidInputError: missing, truncated or corrupt file, or not a fitem segnet.
        fitem.errors.ConfigError: the checkpoint's input mode differs from ``in_channels``.

    Example:
        >>> sn = load_segnet("net.pt", in_channels=3)   # doctest: +SKIP
    """
    if in_channels is not None and in_channels not in INPUT_MODES:
        raise ConfigError(f"in_channels must be 3 or 6 (or None for either), got {in_channels!r}")
    if isinstance(path, SegNet):
        sn = path
        sn.net.to(device)
    else:
        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"segmentation net {p} not found; train one with `fitem distill ANNOTATION_DIR "
                                    "--out NET.pt`")
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
            raise InvalidInputError(f"{p} is not a readable fitem segmentation checkpoint ({type(exc).__name__}: "
                                    f"{exc}); the file is truncated or corrupt — retrain or copy it again") from exc
        except Exception as exc:  # torch's weights-only unpickler raises its own UnpicklingError types
            if type(exc).__name__ != "UnpicklingError":
                raise
            raise InvalidInputError(f"{p} holds objects other than tensors and plain containers; it is not a "
                                    "fitem segmentation checkpoint (refusing to unpickle code)") from exc
        if not isinstance(ckpt, dict) or ckpt.get("kind") != _KIND or "state_dict" not in ckpt:
            raise InvalidInputError(f"{p} is a PyTorch file but not a fitem segmentation checkpoint "
                                    "(write one with fitem.segnet.distill or save_segnet)")
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInputError(f"{p}: checkpoint format {ckpt.get('format')!r} is not supported by this fitem "
                                    f"(expects {CHECKPOINT_FORMAT}); retrain with this version")
        meta = dict(ckpt.get("metadata") or {})
        try:
            net = UNet(int(meta["in_channels"]), base=int(meta["base"]), levels=int(meta["levels"]))
            net.load_state_dict(ckpt["state_dict"])
            crop = int(meta["crop_size"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InvalidInputError(f"{p}: the checkpoint's weights or metadata are inconsistent ({exc}); "
                                    "the file is corrupt — retrain it") from exc
        net.eval()
        sn = SegNet(net.to(device).to(memory_format=torch.channels_last), crop, meta)
    if in_channels is not None and sn.in_channels != in_channels:
        kind = {3: "image only", 6: "image + render"}
        raise ConfigError(f"the segmentation net takes {sn.in_channels} input channels ({kind[sn.in_channels]}) "
                          f"but {in_channels} ({kind[in_channels]}) were requested; use a net trained with "
                          f"--in-channels {in_channels}")
    return sn
