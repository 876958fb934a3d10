"""Pre-training methods by name: the one list the config, the trainer, checkpoint loading, the monitor,
the demo and the tools read.

A method is a module (``siammae/models/<name>.py`` or anywhere importable) with

- ``build(cfg) -> PretrainingModel``: the model for a resolved config (``cfg.model`` sizes it,
  ``cfg.<name>`` holds the method's own keys);
- optionally ``Options``: a dataclass of its own keys, the recipe's ``<name>:`` section, with
  ``RULES`` (key -> (holds, text)) and ``CROSS_RULES`` (((keys...), holds, text); ``options.<key>``
  names its own keys) checked when a config is loaded;
- for a method whose encoder is not a timm ViT (clips), ``frame_encoder(cfg, state_dict)``: the encoder
  that label propagation feeds single frames to;

and one :func:`register` line below. Importing this package imports neither torch nor the methods: a
method's module is imported the first time it is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Method:
    """A registered pre-training method."""

    name: str
    module: str  # the importable module that defines build (and Options, frame_encoder)
    recipe: str  # its small recipe: what `siammae demo --method NAME` trains
    clips: bool = False  # encodes whole clips (VideoMAE, MAE-ST): propagated frame by frame, see frame_encoder
    summary: str = ""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def build(self, cfg):
        """The model for the resolved config ``cfg``, initialised."""
        return self.load().build(cfg)

    def options(self):
        """A fresh instance of the method's own keys (None: it has none)."""
        options = getattr(self.load(), "Options", None)
        return options() if options is not None else None

    def rules(self) -> tuple[dict, list]:
        """(RULES, CROSS_RULES) of the method's module."""
        module = self.load()
        return getattr(module, "RULES", {}), getattr(module, "CROSS_RULES", [])

    def frame_encoder(self, cfg, state_dict):
        return self.load().frame_encoder(cfg, state_dict)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method; the config accepts its name and its section from then on."""
    METHODS[method.name] = method
    return method


register(Method("siammae", "siammae.models.siammae", "tiny", summary="Siamese MAE on frame pairs (the paper)"))
register(Method("cmae", "siammae.models.cmae", "cmae_tiny", summary="contrastive MAE on frame pairs"))
register(Method("cropmae", "siammae.models.cropmae", "cropmae_tiny", summary="SiamMAE on two crops of one frame"))
register(Method("rsp", "siammae.models.rsp", "rsp_tiny", summary="stochastic frame prediction (RSP) on frame pairs"))
register(Method("tobo", "siammae.models.tobo", "tobo_tiny", summary="token bottleneck (ToBo) on frame pairs"))
register(Method("videomae", "siammae.models.clip", "videomae_tiny", clips=True, summary="VideoMAE on clips"))
register(Method("maest", "siammae.models.clip", "maest_tiny", clips=True, summary="MAE-ST on clips"))


def build_model(cfg):
    """The model of ``cfg.model.method`` for the resolved config ``cfg``."""
    return METHODS[cfg.model.method].build(cfg)
