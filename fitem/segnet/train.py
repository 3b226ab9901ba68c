"""Distillation: train the segmentation UNet on the masks of the per-image EM fits.

``distill(ANNOTATION_DIR, NET.pt)`` reads every ``done`` image of a ``fitem
annotate`` folder as an aligned crop with the fit's visible-face mask as target
(:mod:`fitem.segnet.data`), holds out ``val_fraction`` of them, and trains
with AdamW + a cosine learning-rate decay on

    loss = BCE(logits, mask; weight = valid crop pixels) + dice_weight · (1 − soft Dice)

under augmentation (horizontal flip, colour jitter of the image, a small random
similarity). Per epoch it reports the training loss and, on the held-out crops,
the loss and the visible-face F1 / IoU of ``p > 0.5`` against the fit masks,
counted inside the fit's face region (as the FOCUS protocol counts inside the
face region). The checkpoint is rewritten atomically after every epoch, so an
interrupted run leaves the last finished epoch.

Self-training (``rounds=K``, as the paper's EM alternates over a data set):
after the first distillation, each round re-annotates the same inputs with
:func:`fitem.fit` seeded by the previous net (its prior log-odds in every
E-step and its mask as the first one; annotate's per-image task
:func:`fit_image_with_segnet`), measures how much the masks changed from the
previous round, and distils a new net from the new annotation.

Example:
    >>> report = distill("annotations/", "net.pt", epochs=30)      # doctest: +SKIP
    >>> report.epochs[-1].val_f1                                    # doctest: +SKIP
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from fitem.errors import ConfigError, InvalidInputError
from fitem.segnet.data import AnnotationCrops, done_records, load_crops, read_annotation
from fitem.segnet.net import UNet, load_segnet, save_segnet

__all__ = ["DistillConfig", "EpochRecord", "SelfTrainingRound", "DistillReport", "distill", "train_net",
           "augment_batch", "segmentation_loss", "fit_image_with_segnet", "compare_annotations"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation (validated).

    Attributes:
        epochs: passes over the training crops.
        batch_size: crops per step.
        lr: peak AdamW learning rate (cosine decay to 1 % of it).
        weight_decay: AdamW weight decay.
        in_channels: 3 (image) or 6 (image + initial render).
        base: width of the UNet's first level (8 meets ≤ 40 ms per 224² crop on 2 CPU cores).
        levels: UNet levels.
        val_fraction: share of the crops held out for validation (0 = none).
        seed: seeds the split, the initialisation, the order and the augmentation.
        dice_weight: weight of the soft-Dice term.
        augment: flip + colour jitter + small affine on the training crops.
        jitter: strength of brightness / contrast / saturation jitter (± fraction).
        rotate_deg, scale, shift: range of the random similarity (degrees, ± fraction, ± fraction of the side).
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    in_channels: int = 3
    base: int = 8
    levels: int = 4
    val_fraction: float = 0.1
    seed: int = 0
    dice_weight: float = 1.0
    augment: bool = True
    jitter: float = 0.25
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.05

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "base", "levels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"DistillConfig.{name} must be an integer >= 1, got {v!r}")
        if self.in_channels not in (3, 6):
            raise ConfigError(f"in_channels must be 3 (image) or 6 (image + render), got {self.in_channels!r}")
        for name in ("lr",):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"DistillConfig.{name} must be a positive number, got {v!r}")
        for name in ("weight_decay", "dice_weight", "jitter", "rotate_deg", "scale", "shift"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"DistillConfig.{name} must be a finite number >= 0, got {v!r}")
        if not (0.0 <= self.val_fraction < 1.0):
            raise ConfigError(f"val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        if self.jitter >= 1 or self.scale >= 1:
            raise ConfigError("jitter and scale must be < 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochRecord:
    """One epoch: mean training loss and held-out scores against the fit masks (NaN without validation)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_f1: float
    val_iou: float
    lr: float
    seconds: float


@dataclass
class SelfTrainingRound:
    """One self-training round: re-annotation with the previous net, then a new distillation.

    ``mask_change``: mean over images of the fraction of pixels (inside the union of the two
    rounds' face regions) whose label changed; ``mask_f1``: mean F1 of this round's masks
    against the previous round's (same domain); both over images done in both rounds.
    """

    round: int
    annotation_dir: str
    net_path: str
    n_done: int
    n_compared: int
    mask_change: float
    mask_f1: float
    val_f1: float
    seconds: float


@dataclass
class DistillReport:
    """What :func:`distill` did (JSON-ready through :meth:`as_dict`)."""

    out_path: str
    annotation_dir: str
    config: dict[str, Any]
    crop_size: int
    n_train: int
    n_val: int
    n_skipped: int
    epochs: list[EpochRecord] = field(default_factory=list)
    rounds: list[SelfTrainingRound] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A small text table of the epochs (and rounds)."""
        rows = ["epoch  train_loss  val_loss  val_F1  val_IoU  seconds"]
        rows += [f"{e.epoch:5d}  {e.train_loss:10.4f}  {e.val_loss:8.4f}  {e.val_f1:6.3f}  {e.val_iou:7.3f}  "
                 f"{e.seconds:7.1f}" for e in self.epochs]
        if self.rounds:
            rows.append("round  done  compared  mask_change  mask_F1  val_F1")
            rows += [f"{r.round:5d}  {r.n_done:4d}  {r.n_compared:8d}  {r.mask_change:11.4f}  {r.mask_f1:7.4f}  "
                     f"{r.val_f1:6.3f}" for r in self.rounds]
        return "\n".join(rows)


# --------------------------------------------------------------------------- augmentation and loss
def augment_batch(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, config: DistillConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random flip, colour jitter (image channels only) and small similarity of a batch.

    Args:
        x: ``(B, C, S, S)`` inputs in [0, 1] (channels 0-2 the image, 3-5 a render).
        y: ``(B, 1, S, S)`` 0/1 targets.  w: ``(B, 1, S, S)`` 0/1 valid-pixel weights.
        generator: a CPU torch generator (reproducible augmentation).

    Returns:
        The augmented ``(x, y, w)``; pixels moved in from outside the crop get ``w = 0``.
    """
    b = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand((b, *shape), generator=generator)).to(dev)

    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    if flip.any():
        x, y, w = (torch.where(flip[:, None, None, None], t.flip(-1), t) for t in (x, y, w))
    j = config.jitter
    if j > 0:
        img = x[:, :3]
        grey = (img * torch.tensor([0.299, 0.587, 0.114], device=dev)[None, :, None, None]).sum(1, keepdim=True)
        img = grey + u(1 - j, 1 + j, 1, 1, 1) * (img - grey)  # saturation
        mean = img.mean((1, 2, 3), keepdim=True)
        img = mean + u(1 - j, 1 + j, 1, 1, 1) * (img - mean)  # contrast
        img = img * u(1 - j, 1 + j, 1, 1, 1) * u(1 - j / 3, 1 + j / 3, 3, 1, 1)  # brightness, per-channel gain
        img = img.clamp(0, 1) * w  # padding stays black, as in real crops
        x = torch.cat([img, x[:, 3:]], 1)
    if config.rotate_deg > 0 or config.scale > 0 or config.shift > 0:
        ang = u(-1, 1) * math.radians(config.rotate_deg)
        s = u(1 - config.scale, 1 + config.scale)
        t = u(-config.shift, config.shift, 2) * 2  # normalised coordinates span 2
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        yw = F.grid_sample(torch.cat([y, w], 1), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        y, w = yw[:, :1], yw[:, 1:]
    return x, y, w


def segmentation_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, dice_weight: float = 1.0
                      ) -> torch.Tensor:
    """``BCE + dice_weight · (1 − soft Dice)``, both over pixels with ``w > 0``; shapes ``(B, 1, S, S)``.

    Example:
        >>> y = torch.ones(1, 1, 4, 4); w = torch.ones_like(y)
        >>> float(segmentation_loss(torch.full_like(y, 20.0), y, w)) < 1e-3
        True
    """
    bce = F.binary_cross_entropy_with_logits(logits, y, weight=w, reduction="sum") / w.sum().clamp_min(1.0)
    if dice_weight == 0:
        return bce
    p = torch.sigmoid(logits) * w
    inter = (p * y).sum((1, 2, 3))
    denom = p.sum((1, 2, 3)) + (y * w).sum((1, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return bce + dice_weight * (1 - dice).mean()


# --------------------------------------------------------------------------- training
def _inputs(crops: AnnotationCrops) -> torch.Tensor:
    """``(N, C, S, S)`` uint8 network inputs."""
    x = torch.from_numpy(crops.images).permute(0, 3, 1, 2)
    if crops.renders is not None:
        x = torch.cat([x, torch.from_numpy(crops.renders).permute(0, 3, 1, 2)], 1)
    return x.contiguous()


def _scores(prob: np.ndarray, target: np.ndarray, domain: np.ndarray) -> tuple[float, float]:
    p, g = prob[domain] >= 0.5, target[domain]
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    if tp + fn == 0:
        return math.nan, math.nan
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


@torch.no_grad()
def _validate(net: UNet, x: torch.Tensor, crops: AnnotationCrops, cfg: DistillConfig, device: torch.device
              ) -> tuple[float, float, float]:
    net.eval()
    losses, f1s, ious = [], [], []
    for i in range(0, len(crops), cfg.batch_size):
        sl = slice(i, i + cfg.batch_size)
        xb = x[sl].to(device).float() / 255.0
        yb = torch.from_numpy(crops.masks[sl]).to(device).float()[:, None]
        wb = torch.from_numpy(crops.valid[sl]).to(device).float()[:, None]
        logits = net(xb.contiguous(memory_format=torch.channels_last))
        losses.append(float(segmentation_loss(logits, yb, wb, cfg.dice_weight)) * xb.shape[0])
        prob = torch.sigmoid(logits)[:, 0].cpu().numpy()
        for k in range(prob.shape[0]):
            j = i + k
            f1, iou = _scores(prob[k], crops.masks[j], crops.regions[j] & crops.valid[j])
            f1s.append(f1)
            ious.append(iou)
    return sum(losses) / max(len(crops), 1), _nanmean(f1s), _nanmean(ious)


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train_net(train: AnnotationCrops, val: AnnotationCrops | None, config: DistillConfig, *,
              device: "str | torch.device" = "cpu", progress: bool = True, on_epoch=None
              ) -> tuple[UNet, list[EpochRecord]]:
    """Train a fresh :class:`UNet` on in-memory crops (the core of :func:`distill`).

    Args:
        train, val: crops (``val`` may be None or empty).
        config: the :class:`DistillConfig`.
        device: torch device.
        progress: a tqdm bar over the steps.
        on_epoch: optional ``callback(net, EpochRecord)`` after each epoch (e.g. to checkpoint).

    Returns:
        ``(net, epochs)``.
    """
    dev = torch.device(device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    net = UNet(config.in_channels, base=config.base, levels=config.levels).to(dev).to(
        memory_format=torch.channels_last)
    x_train = _inputs(train)
    if x_train.shape[1] != config.in_channels:
        raise ConfigError(f"the crops have {x_train.shape[1]} channels but in_channels={config.in_channels}")
    y_train = torch.from_numpy(train.masks)[:, None]
    w_train = torch.from_numpy(train.valid)[:, None]
    x_val = _inputs(val) if val is not None and len(val) else None
    n = len(train)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    total = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="distill", unit="step")
    records: list[EpochRecord] = []
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            net.train()
            order = torch.randperm(n, generator=gen)
            lr_now = opt.param_groups[0]["lr"]
            loss_sum = 0.0
            for s in range(steps_per_epoch):
                idx = order[s * config.batch_size:(s + 1) * config.batch_size]
                xb = x_train[idx].to(dev).float() / 255.0
                yb = y_train[idx].to(dev).float()
                wb = w_train[idx].to(dev).float()
                if config.augment:
                    xb, yb, wb = augment_batch(xb, yb, wb, config, gen)
                logits = net(xb.contiguous(memory_format=torch.channels_last))
                loss = segmentation_loss(logits, yb, wb, config.dice_weight)
                if not torch.isfinite(loss):
                    raise InvalidInputError(f"the training loss became {float(loss)} in epoch {epoch}; lower the "
                                            "learning rate (--lr)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}")
            if x_val is not None:
                vl, vf, vi = _validate(net, x_val, val, config, dev)
            else:
                vl = vf = vi = math.nan
            rec = EpochRecord(epoch, loss_sum / n, vl, vf, vi, lr_now, time.perf_counter() - t0)
            records.append(rec)
            log.info("epoch %d: train loss %.4f, val loss %.4f, val F1 %.3f, IoU %.3f", epoch, rec.train_loss,
                     vl, vf, vi)
            if on_epoch is not None:
                on_epoch(net, rec)
    finally:
        if bar is not None:
            bar.close()
    net.eval()
    return net, records


def _version() -> str:
    import fitem

    return fitem.__version__


def _distill_once(annotation_dir: Path, out_path: Path, cfg: DistillConfig, *, device, keys, progress
                  ) -> DistillReport:
    t0 = time.perf_counter()
    crops = load_crops(annotation_dir, in_channels=cfg.in_channels, keys=keys, progress=progress)
    tr, va = _split(len(crops), cfg.val_fraction, cfg.seed)
    train, val = crops.subset(tr), crops.subset(va)
    log.info("distilling from %d crops (%d train, %d validation, %d unreadable) of %s", len(crops), len(tr),
             len(va), len(crops.skipped), annotation_dir)
    run = crops.run
    base_meta = {
        "crop_size": crops.crop_size, "config": cfg.as_dict(), "fit_config": run.get("config", {}),
        "config_hash": run.get("config_hash"), "model": run.get("model"),
        "model_checksum": run.get("model_checksum"), "fitem_version": _version(),
        "annotation_dir": str(annotation_dir.resolve()), "n_train": len(tr), "n_val": len(va),
        "train_keys_sha256": _keys_digest(train.keys),
    }

    def checkpoint(net: UNet, rec: EpochRecord) -> None:
        save_segnet(net, out_path, {**base_meta, "epoch": rec.epoch, "epochs": cfg.epochs,
                                    "train_loss": _finite_or_none(rec.train_loss),
                                    "val": {"loss": _finite_or_none(rec.val_loss), "f1": _finite_or_none(rec.val_f1),
                                            "iou": _finite_or_none(rec.val_iou)},
                                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

    _, epochs = train_net(train, val, cfg, device=device, progress=progress, on_epoch=checkpoint)
    return DistillReport(out_path=str(out_path), annotation_dir=str(annotation_dir), config=cfg.as_dict(),
                         crop_size=crops.crop_size, n_train=len(tr), n_val=len(va), n_skipped=len(crops.skipped),
                         epochs=epochs, seconds=time.perf_counter() - t0)


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _keys_digest(keys: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def distill(
    annotation_dir: str | Path,
    out_path: str | Path,
    *,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    in_channels: int = 3,
    base: int = 8,
    device: "str | torch.device" = "cpu",
    val_fraction: float = 0.1,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    augment: bool = True,
    rounds: int = 0,
    work_dir: str | Path | None = None,
    n_jobs: int = 1,
    progress: bool = True,
) -> DistillReport:
    """Distil the masks of a ``fitem annotate`` folder into a segmentation net (module docstring).

    Args:
        annotation_dir: output folder of ``fitem annotate`` (``run.json``, ``manifest.jsonl``, ``results/``).
        out_path: checkpoint to write (``.pt``; rewritten atomically after every epoch).
        epochs, batch_size, lr, base, augment, seed, val_fraction: see :class:`DistillConfig`.
        in_channels: 3 (image only) or 6 (image + the fit's initial render).
        device: torch device for training.
        keys: train only on these manifest keys (e.g. to hold images out); default all ``done`` ones.
        rounds: self-training rounds after the first distillation (0 = none); each re-annotates the
            inputs with the previous net as the EM's prior and distils again.
        work_dir: where the rounds' annotations and nets go (default ``<out_path stem>_rounds/``
            next to ``out_path``).
        n_jobs: parallel fits when re-annotating in rounds.
        progress: tqdm bars.

    Returns:
        :class:`DistillReport` (per-epoch losses and validation F1/IoU; per-round mask changes).
        ``epochs`` are those of the last distillation.

    Raises:
        fitem.errors.InvalidInputError: not an annotation folder; no ``done`` image (or none readable).
        fitem.errors.ConfigError: bad settings; results of mixed crop sizes.

    Example:
        >>> rep = distill("annotations/", "net.pt", epochs=30)     # doctest: +SKIP
        >>> print(rep.table())                                       # doctest: +SKIP
    """
    cfg = DistillConfig(epochs=epochs, batch_size=batch_size, lr=lr, in_channels=in_channels, base=base,
                        val_fraction=val_fraction, seed=seed, augment=augment)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
        raise ConfigError(f"rounds must be an integer >= 0, got {rounds!r}")
    from fitem.api import resolve_device
    from fitem.config import FitConfig

    dev = resolve_device(FitConfig(), device)
    t0 = time.perf_counter()
    ann = Path(annotation_dir)
    out = Path(out_path)
    if rounds == 0:
        report = _distill_once(ann, out, cfg, device=dev, keys=keys, progress=progress)
        report.seconds = time.perf_counter() - t0
        return report

    work = Path(work_dir) if work_dir is not None else out.with_name(f"{out.stem}_rounds")
    work.mkdir(parents=True, exist_ok=True)
    net_path = work / "net_round0.pt"
    report = _distill_once(ann, net_path, cfg, device=dev, keys=keys, progress=progress)
    run, records = read_annotation(ann)
    chosen = records if keys is None else {k: r for k, r in records.items() if k in set(keys)}
    inputs = sorted({r["input"] for r in chosen.values()})
    prev_dir = ann
    round_reports: list[SelfTrainingRound] = []
    for k in range(1, rounds + 1):
        tr = time.perf_counter()
        ann_k = work / f"annotation_round{k}"
        _annotate_with_net(inputs, ann_k, run=run, net_path=net_path, n_jobs=n_jobs, progress=progress)
        change, f1, n_cmp, n_done = compare_annotations(prev_dir, ann_k)
        net_k = work / f"net_round{k}.pt"
        rep_k = _distill_once(ann_k, net_k, cfg, device=dev, keys=None, progress=progress)
        val_f1 = rep_k.epochs[-1].val_f1 if rep_k.epochs else math.nan
        round_reports.append(SelfTrainingRound(k, str(ann_k), str(net_k), n_done, n_cmp, change, f1, val_f1,
                                               time.perf_counter() - tr))
        log.info("self-training round %d: %d done, masks changed on %.2f %% of face pixels (F1 to previous %.4f), "
                 "val F1 %.3f", k, n_done, 100 * change, f1, val_f1)
        report = rep_k
        prev_dir, net_path = ann_k, net_k
    from fitem._files import atomic_write_bytes

    atomic_write_bytes(out, net_path.read_bytes())
    report.out_path = str(out)
    report.rounds = round_reports
    report.seconds = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------- self-training helpers
_NETS: dict[tuple, Any] = {}


def fit_image_with_segnet(image_path: str, result_dir: str, *, model: str, config: dict[str, Any],
                          landmarks: str | None, overlay: bool, mesh: bool, arrays: bool) -> None:
    """Annotate task (``fitem.annotation`` ``task=``): :func:`fitem.fit` seeded by the net in
    ``config["extra"]["segnet"]`` (a checkpoint path; loaded once per worker process).

    Same signature and behaviour as :func:`fitem.annotation.worker.fit_image` otherwise.
    """
    from fitem.annotation.worker import FitFailedError, cached_config, cached_model
    from fitem.api import fit
    from fitem.image import load_image

    extra = config.get("extra") or {}
    net_path = extra.get("segnet")
    if not net_path:
        raise ConfigError("fit_image_with_segnet needs config['extra']['segnet'] = a checkpoint path")
    key = (net_path, extra.get("segnet_sha256"))
    if key not in _NETS:
        _NETS[key] = load_segnet(net_path)
    cfg = cached_config(config)
    image = load_image(image_path)
    result = fit(image, landmarks=landmarks, model=cached_model(model), config=cfg, segnet=_NETS[key])
    if not result.success:
        raise FitFailedError(f"the fit of {image_path!r} failed: {result.message}")
    result.save(result_dir, image=image if overlay else None, arrays=arrays, mesh=mesh)


def _annotate_with_net(inputs: list[str], out_dir: Path, *, run: dict[str, Any], net_path: Path, n_jobs: int,
                       progress: bool) -> None:
    try:
        from fitem.annotation import annotate
    except ImportError as exc:  # pragma: no cover - annotate ships with fitem
        raise ConfigError(f"self-training rounds need fitem.annotation ({exc})") from exc
    from fitem.segnet.data import _fit_config

    import hashlib

    from fitem.annotation.manifest import RUN_FILE, read_run

    cfg = _fit_config(run.get("config", {}))
    digest = hashlib.sha256(Path(net_path).read_bytes()).hexdigest()[:16]
    # the net's digest is part of the config (and so of its hash): a folder annotated with another
    # net is redone, an interrupted round with the same net resumes
    cfg = cfg.replace(extra={**dict(cfg.extra), "segnet": str(Path(net_path).resolve()), "segnet_sha256": digest})
    overwrite = (out_dir / RUN_FILE).is_file() and read_run(out_dir).get("config_hash") != cfg.hash()
    if overwrite:
        log.info("%s was annotated with another net or config; redoing it", out_dir)
    annotate(inputs, out_dir, config=cfg, model=run.get("model", "demo"), n_jobs=n_jobs, progress=progress,
             task="fitem.segnet.train:fit_image_with_segnet", overwrite=overwrite)


def compare_annotations(before: str | Path, after: str | Path) -> tuple[float, float, int, int]:
    """How the masks changed between two annotations of the same inputs (matched by input path).

    Returns:
        ``(mask_change, mask_f1, n_compared, n_done_after)``: mean fraction of pixels (in the union of
        both face regions) whose visible-face label differs, mean F1 of ``after`` against ``before``
        in the same domain, how many images both have done, how many ``after`` has done.
    """
    from fitem._files import read_mask_png

    def masks(d: Path, rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        folder = d / rec["result"]
        try:
            m, o = read_mask_png(folder / "mask.png"), read_mask_png(folder / "occlusion.png")
        except InvalidInputError:
            return None
        return m, m | o

    b_dir, a_dir = Path(before), Path(after)
    _, rb = read_annotation(b_dir)
    _, ra = read_annotation(a_dir)
    b_by_input = {r["input"]: r for r in done_records(rb)}
    a_done = done_records(ra)
    changes, f1s = [], []
    for rec in a_done:
        prev = b_by_input.get(rec["input"])
        if prev is None:
            continue
        ma, mb = masks(a_dir, rec), masks(b_dir, prev)
        if ma is None or mb is None or ma[0].shape != mb[0].shape:
            continue
        dom = ma[1] | mb[1]
        if not dom.any():
            continue
        changes.append(float((ma[0] != mb[0])[dom].mean()))
        f1s.append(_scores(ma[0].astype(np.float32), mb[0], dom)[0])
    return _nanmean(changes), _nanmean(f1s), len(changes), len(a_done)
