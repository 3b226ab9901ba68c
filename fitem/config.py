"""``FitConfig``: every knob of ``fitem.fit``, frozen and validated."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from fitem.errors import ConfigError
from fitem.params import BLOCKS

__all__ = ["FitConfig"]

_BACKENDS = ("auto", "torch", "nvdiffrast")


@dataclass(frozen=True)
class FitConfig:
    """Configuration of one fit (image → landmarks → init → EM → result).

    Attributes:
        size: working (crop) resolution in pixels, square.
        rounds: maximum EM rounds (E-step + M-step each); ≥ 1. Default 4: on images used
            to choose nothing a fourth round lifts every occluder class (paired, seed 2000: hand
            occluder F1 +0.021 ± 0.011, visible-face +0.008 ± 0.003; 40 hands of seed 400:
            +0.020 ± 0.004 / +0.008 ± 0.002; no class worse; over 136 untouched hands 0.820 /
            0.936) for about a quarter more time.
        iterations: LM iterations per M-step.
        first_iterations: LM iterations of the first M-step (pose, light and
            colour only, on the conservative mask).
        free: parameter blocks optimised after the first round.
        first_free: blocks optimised in the first M-step.
        n_shape, n_expression, n_colour: use only the first components of each
            model block (None: all).
        sigma: colour noise σ of the face likelihood ([0, 1] images); None
            estimates it robustly from the residuals at every E-step.
        min_sigma: floor of the E-step's σ when it is estimated from the image (``sigma=None``, or
            ``sigma_adapt``). 0.01 is about the noise of a clean 8-bit render; photographs stay well
            above it (their robust σ is 0.02-0.04).
        sigma_from: estimate σ on the ``"region"`` or on the current ``"mask"``.
        photometric_weight: weight of the photometric term.
        effective_pixels: how many independent pixels the photometric evidence
            counts as, against the priors (tempers the likelihood).
        robust_scale: the M-step's Cauchy loss on each pixel's colour residual has scale
            ``robust_scale · σ`` (0 = plain least squares).
        max_pixels: pixels sampled per M-step for the photometric term.
        max_trials: LM trial steps per iteration. When all are rejected, the round's M-step
            stops at its best point (not a failure): the rasterised cost has a noise floor, and
            steps that need many rejections gain nothing there.
        landmark_weight: weight of the landmark term in round 1;
            multiplied by ``landmark_decay`` every round.
        landmark_sigma: landmark noise in pixels at ``size`` 224 (scaled with size).
        landmark_decay: per-round factor on the landmark weight.
        shape_prior, expression_prior, colour_prior: precision of the
            coefficients' N(0, 1) priors (1 = the model's own prior).
        light_prior: precision on SH light around the ambient start.
        sigma_adapt: with a fixed ``sigma``, the E-step uses
            ``min(sigma, max(min_sigma, sigma_adapt · robust σ of flat visible skin))``
            (:func:`fitem.occlusion.adaptive_sigma`): an image the model explains better than a
            photograph (e.g. a clean render) gets a sharper face likelihood; on photographs the
            product exceeds ``sigma`` and nothing changes. 0 = always ``sigma``.
        photometric_min_sigma: with a fixed ``sigma``, the M-step's photometric σ is the E-step's
            (adapted) σ but not below this (a σ as sharp as a clean render's noise lets occluder
            pixels still labelled face pull the shape).
        edge_sigma: the face noise grows with the render's gradient,
            ``σ(x)² = σ² + (edge_sigma · |∇render(x)|)²`` (:func:`fitem.occlusion.edge_sigma_map`;
            in pixels of tolerated misalignment; on the silhouette's 2-pixel rim the image's gradient
            stands in): features and a silhouette that are slightly off are not occluders.
            0 = the same σ everywhere.
        region_test: ratio of the E-step's region-level test
            (:func:`fitem.occlusion.region_outliers`): edge-bounded image regions whose mean
            normalised residual exceeds ``region_test`` times the face's (and the spread of the
            face's own regions) are labelled non-face as a whole, which catches skin-coloured
            occluders (hands) that the per-pixel colour test accepts. 0 = off; otherwise > 1.
        region_spread: the region test's second bound, in robust standard deviations of the face's
            own region means (``spread`` of :func:`fitem.occlusion.region_outliers`): what keeps
            the test silent on photographs, whose residual varies from region to region on its own.
            Measured trade-off without the outline test (``region_crossing=0``; ``fitem bench``
            images, 20 hands; real photographs): the default
            (``region_test=2.0``, ``region_spread=5.0``) gives hand occluder F1 0.55 and keeps 0.61-0.65
            of uncovered real faces visible; ``1.3`` / ``1.0`` gives hand F1 0.74, glasses / scarf /
            object 0.81 / 0.88 / 0.85 (from 0.92 / 0.95 / 0.95), and keeps only 0.42-0.47.
        region_crossing: the region test's outline test (``crossing`` of
            :func:`fitem.occlusion.region_outliers`): an image region with at least this share of
            its pixels outside the rendered face region runs across the face's outline (a hand
            and its forearm); when its residual inside the face is 1.3 times the face's, it is
            labelled non-face (except its parts under 0.8 times the face's residual), and where
            it is merged with much face, the parts reached from the outline through parts with a
            residual above the face's are. In ``[0, 1)``; 0 = off. Runs only with the region test
            (``region_test > 0``). Measured (``fitem bench``, 100 images): hand occluder F1
            0.55 → 0.85, all classes 0.83 → 0.91 (on 100 images used to choose nothing,
            ``--seed 300``: hand 0.47 → 0.72, all 0.81 → 0.87; pooled over 136 untouched
            hands 0.79, with 4 EM rounds 0.82, ``benchmarks/results/bench_untouched*``); uncovered real
            photographs keep the same visible share (±0.014).
        smoothness: Potts weight of the E-step's graph cut.
        nonface_histogram: colours of the non-face likelihood: ``"nonface"`` (a histogram
            of the pixels currently labelled non-face: background and occluders) or
            ``"image"`` (the whole image, as Egger et al. 2018).
        mask_tolerance: stop when less than this fraction of the face region
            changes label between rounds.
        use_em: False fixes the mask to "all face" (the baseline that the EM must beat).
        backend: rasterizer: "auto", "torch" or "nvdiffrast".
        device: torch device string, or None (CUDA if available with nvdiffrast, else CPU).
        detector: landmark detector name ("mediapipe" or "dlib").
        seed: seeds the pixel sampling. Fits are reproducible on one machine: the same image
            gives the same mask and parameters in another process, with 1 or 2 threads, and
            after other fits (tested; two ``fitem bench -j 2`` runs of 20 hand images agree row
            for row). Other CPUs or BLAS builds may differ in the last bits, which the E-step's
            thresholds can amplify.
        progress: show a tqdm bar.
    """

    size: int = 224
    rounds: int = 4
    iterations: int = 4
    first_iterations: int = 3
    free: tuple[str, ...] = BLOCKS
    first_free: tuple[str, ...] = ("colour", "light", "rotation", "translation")
    n_shape: int | None = None
    n_expression: int | None = None
    n_colour: int | None = None
    sigma: float | None = 0.043
    min_sigma: float = 0.01
    sigma_from: str = "mask"
    photometric_weight: float = 1.0
    effective_pixels: float = 2000.0
    robust_scale: float = 3.0
    max_pixels: int = 3000
    max_trials: int = 3
    landmark_weight: float = 1.0
    landmark_sigma: float = 3.0
    landmark_decay: float = 0.5
    shape_prior: float = 1.0
    expression_prior: float = 1.0
    colour_prior: float = 1.0
    light_prior: float = 0.05
    sigma_adapt: float = 1.5
    photometric_min_sigma: float = 0.02
    edge_sigma: float = 0.5
    region_test: float = 2.0
    region_spread: float = 5.0
    region_crossing: float = 0.2
    smoothness: float = 1.0
    nonface_histogram: str = "nonface"
    mask_tolerance: float = 0.005
    use_em: bool = True
    backend: str = "auto"
    device: str | None = None
    detector: str = "mediapipe"
    seed: int = 0
    progress: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                raise ConfigError(f"FitConfig.{name} must be an integer ≥ {minimum}, got {v!r}")

        positive_int("size", 32)
        positive_int("rounds", 1)
        positive_int("iterations", 0)
        positive_int("first_iterations", 0)
        positive_int("max_pixels", 16)
        positive_int("max_trials", 1)
        for name in ("n_shape", "n_expression", "n_colour"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise ConfigError(f"FitConfig.{name} must be None or an integer ≥ 0, got {v!r}")
        for name in ("photometric_weight", "landmark_weight", "shape_prior", "expression_prior", "colour_prior",
                     "light_prior", "smoothness", "mask_tolerance", "effective_pixels", "min_sigma",
                     "robust_scale", "sigma_adapt", "edge_sigma", "photometric_min_sigma", "region_spread"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"FitConfig.{name} must be a finite number ≥ 0, got {v!r}")
        for name in ("landmark_sigma",):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"FitConfig.{name} must be a positive number, got {v!r}")
        if not (isinstance(self.region_test, (int, float)) and math.isfinite(self.region_test)
                and (self.region_test == 0 or self.region_test > 1)):
            raise ConfigError(f"FitConfig.region_test must be 0 (off) or a ratio > 1, got {self.region_test!r}")
        if not (isinstance(self.region_crossing, (int, float)) and 0 <= self.region_crossing < 1):
            raise ConfigError(f"FitConfig.region_crossing must lie in [0, 1) (0 = off), got {self.region_crossing!r}")
        if not (0 <= self.landmark_decay <= 1):
            raise ConfigError(f"FitConfig.landmark_decay must lie in [0, 1], got {self.landmark_decay!r}")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ConfigError(f"FitConfig.sigma must be None (robust estimate) or > 0, got {self.sigma!r}")
        for name in ("free", "first_free"):
            v = tuple(getattr(self, name))
            bad = [b for b in v if b not in BLOCKS]
            if bad or not v:
                raise ConfigError(f"FitConfig.{name} must name parameter blocks from {list(BLOCKS)}, got {v!r}")
            object.__setattr__(self, name, v)
        if self.sigma_from not in ("region", "mask"):
            raise ConfigError(f"FitConfig.sigma_from must be 'region' or 'mask', got {self.sigma_from!r}")
        if self.nonface_histogram not in ("nonface", "image"):
            raise ConfigError(f"FitConfig.nonface_histogram must be 'nonface' or 'image', got {self.nonface_histogram!r}")
        if self.backend not in _BACKENDS:
            raise ConfigError(f"FitConfig.backend must be one of {_BACKENDS}, got {self.backend!r}")

    def replace(self, **changes) -> "FitConfig":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["free"] = list(self.free)
        d["first_free"] = list(self.first_free)
        return d

    def hash(self) -> str:
        """Stable short hash of the settings that change results (not ``progress``)."""
        d = self.as_dict()
        d.pop("progress", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]
