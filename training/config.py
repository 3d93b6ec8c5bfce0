"""Training configuration: a recipe (:class:`~onnxverify.training.schedules.TrainingPreset`)
plus run settings, from a preset, a config file (JSON or TOML) and/or keyword overrides.
Pure Python (no torch import).

A config file is one flat mapping; every key is either a :class:`TrainingPreset` field
(``epochs``, ``eps_train``, ``lr``, ``eps_start``, ``eps_ramp``, ``method``, ``kappa_end``,
``reg_lambda``, ...) or a :class:`TrainConfig` run field (``data``, ``seed``, ``device``,
``r_noise``, ...); the key ``preset`` names the recipe the others modify::

    # fast.toml
    preset = "fast-mnist"
    data = "mnist:../shared/data/mnist"
    epochs = 20
    eps_ramp = 10

Precedence: preset < config file < explicit overrides (CLI flags).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .schedules import PRESETS, TrainingPreset, get_preset

__all__ = ["TrainConfig", "load_config_file", "make_config", "RECIPE_FIELDS", "RUN_FIELDS"]

DEFAULT_PRESET = "digits-quick"


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model.

    ``recipe``: schedules, optimiser, loss (see :class:`TrainingPreset`; ``recipe.eps_train`` and
    ``recipe.eps_test`` are raw-pixel radii).  Run fields:

    * ``data`` -- data set spec (``digits``, ``mnist:DIR``, ``cifar10:DIR``);
    * ``seed`` -- shuffling, augmentation, r noise, PGD restarts;
    * ``device`` -- torch device (``cpu``, ``cuda``); ``threads`` -- torch CPU threads (None:
      torch's default; 1 is often faster on a busy or small machine);
    * ``n_train``/``n_test`` -- random subsets (None = all);
    * ``eval_samples`` -- test images for the per-epoch log (clean and IBP verified error;
      None = all test images, 0 = no per-epoch test evaluation); ``eval_pgd_steps`` /
      ``eval_pgd_restarts`` -- a per-epoch PGD error at ``eval_eps`` (default: the first test eps) on the same images (0 steps = off);
      ``eval_statuses`` -- per-epoch neuron statuses (IBP) of every activation layer;
    * ``crown_strategy`` -- bounding-line strategy of the CROWN-IBP training bound ("adaptive");
    * ``r_init`` -- ParamRamp ``r``: ``mean`` (set to each neuron's mean activation over the
      training set when eps starts, LeakyReLU before) or ``keep`` (as in the model file);
      ``r_init_samples`` training images used for the means; ``r_floor`` lower floor;
    * ``r_noise`` -- Gaussian noise of std ``r_noise`` x (layer mean of r) added to r in
      each training step (0 = off; the paper uses 0.01 against over-fitting);
    * ``reinit`` -- ``keep`` the model's weights, or re-initialise conv/linear layers with
      ``ibp`` (fast recipe) or ``default`` initialisation;
    * ``pgd_steps``/``pgd_restarts``/``pgd`` -- final PGD evaluation; ``verify_methods`` --
      verified errors of the exported model (``ibp``, ``crown-lbp``; unavailable methods are
      reported as such); ``eval_batch_size``;
    * ``progress`` -- tqdm progress bars; ``checkpoint_every`` -- epochs between checkpoints.
    """

    recipe: TrainingPreset = field(default_factory=lambda: get_preset(DEFAULT_PRESET))
    data: str = "digits"
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    eval_samples: Optional[int] = 1000
    eval_eps: Optional[float] = None
    eval_pgd_steps: int = 0
    eval_pgd_restarts: int = 1
    eval_statuses: bool = True
    crown_strategy: str = "adaptive"
    r_init: str = "mean"
    r_init_samples: int = 10000
    r_floor: float = 1e-4
    r_noise: float = 0.0
    reinit: str = "keep"
    pgd: bool = True
    pgd_steps: int = 200
    pgd_restarts: int = 10
    verify_methods: Tuple[str, ...] = ("ibp", "crown-lbp")
    eval_batch_size: int = 256
    progress: bool = True
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.verify_methods, str):
            self.verify_methods = tuple(m.strip() for m in self.verify_methods.split(",") if m.strip())
        self.verify_methods = tuple(self.verify_methods)
        if self.r_init not in ("mean", "keep"):
            raise ValueError(f"r_init must be 'mean' or 'keep', got {self.r_init!r}")
        if self.reinit not in ("keep", "ibp", "default"):
            raise ValueError(f"reinit must be 'keep', 'ibp' or 'default', got {self.reinit!r}")
        if self.crown_strategy not in ("constant", "tight", "adaptive"):
            raise ValueError(f"crown_strategy must be constant, tight or adaptive, got {self.crown_strategy!r}")
        for name in ("pgd_steps", "eval_pgd_steps", "pgd_restarts", "eval_pgd_restarts", "r_init_samples", "eval_batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < (0 if name in ("pgd_steps", "eval_pgd_steps") else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.r_noise < 0:
            raise ValueError(f"r_noise must be >= 0, got {self.r_noise}")
        r = self.recipe
        if r.epochs < 1 or r.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1 (got {r.epochs}, {r.batch_size})")
        if r.eps_train < 0:
            raise ValueError(f"eps must be >= 0, got {r.eps_train}")

    @property
    def eps_eval(self) -> float:
        """Radius of the per-epoch test evaluation: ``eval_eps``, else the first test eps (else
        the train eps)."""
        if self.eval_eps is not None:
            return float(self.eval_eps)
        return float(self.recipe.eps_test[0]) if self.recipe.eps_test else float(self.recipe.eps_train)

    def to_dict(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in RUN_FIELDS}
        d["verify_methods"] = list(self.verify_methods)
        d.update(self.recipe.to_dict())
        d["eps_test"] = list(self.recipe.eps_test)
        d["lr_milestones"] = list(self.recipe.lr_milestones)
        return d

    def replace(self, **changes: Any) -> "TrainConfig":
        return make_config(base=self, **changes)


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingPreset))
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "recipe")
_ALIASES = {"eps": "eps_train", "epsilon": "eps_train", "batch": "batch_size"}


def load_config_file(path) -> Dict[str, Any]:
    """A flat mapping from a ``.json`` or ``.toml`` file (keys checked by :func:`make_config`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python < 3.11
            raise ValueError("TOML config files need Python >= 3.11 (use JSON instead)") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML ({e})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping of settings, got {type(data).__name__}")
    return data


def make_config(preset: Optional[str] = None, config_file=None, base: Optional[TrainConfig] = None,
                **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig`: ``base`` (or ``preset``, default ``digits-quick``), then the
    file's settings, then ``overrides`` (``None`` values are ignored).  Unknown keys raise."""
    settings: Dict[str, Any] = {}
    if config_file is not None:
        settings.update(load_config_file(config_file))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings = {_ALIASES.get(k, k).replace("-", "_"): v for k, v in settings.items()}
    preset = settings.pop("preset", None) or preset
    if base is not None and preset is None:
        recipe, run = base.recipe, {k: getattr(base, k) for k in RUN_FIELDS}
    else:
        name = preset or DEFAULT_PRESET
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        recipe, run = get_preset(name), {}
    unknown = [k for k in settings if k not in RECIPE_FIELDS and k not in RUN_FIELDS]
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}; recipe settings: "
                         f"{', '.join(RECIPE_FIELDS)}; run settings: {', '.join(RUN_FIELDS)}")
    rec = {k: v for k, v in settings.items() if k in RECIPE_FIELDS}
    if "eps_train" in rec and "eps_test" not in rec:
        rec["eps_test"] = (float(rec["eps_train"]),)
    if "eps_test" in rec and not isinstance(rec["eps_test"], (list, tuple)):
        rec["eps_test"] = (float(rec["eps_test"]),)
    for k in ("lr_milestones",):
        if k in rec:
            rec[k] = tuple(rec[k])
    if rec:
        recipe = recipe.replace(**rec)
    run.update({k: v for k, v in settings.items() if k in RUN_FIELDS})
    return TrainConfig(recipe=recipe, **run)
