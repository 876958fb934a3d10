"""J&F during pre-training: label propagation with the current encoder on a DAVIS-format set.

Pre-training's loss says how well masked patches are reconstructed, not whether the features track
anything; on real video the two can move in opposite directions (a falling loss and falling J&F). The
trainer calls :meth:`DavisMonitor.evaluate` on rank 0 at step 0 (the random-init baseline: the run's
own initial weights) and every ``eval.every`` steps; each call returns one ``metrics.jsonl`` record:

    {"step": 400, "eval_jf": 0.41, "eval_j": 0.44, "eval_f": 0.38, "eval_mean_cosine": 0.61,
     "eval_effective_rank": 9.6, "eval_position_share": 0.30, "eval_seconds": 21.5}

and, with the step-0 record only, ``eval_copy_jf`` (copying frame 0's labels in place: a floor any
encoder that tracks motion should beat). An evaluation that fails returns ``{"step", "eval_error"}``
instead of raising: training never dies for its monitor.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from siammae.config import ConfigError
from siammae.encoders import EncoderInfo, create_vit
from siammae.models import METHODS
from siammae.models.common import timm_spec
from siammae.pictures import plot_loss_curve
from siammae.tasks import TASKS
from siammae.tasks.davis import feature_diagnostics, load
from siammae.tasks.davis_files import DavisError, select_sequences
from siammae.train.runfolder import append_metrics
from siammae.weights import load_strict


class DavisMonitor:
    """Built before training, so a wrong ``eval.davis`` is an error before any step (DavisError)."""

    def __init__(self, cfg, out_dir):
        e = cfg.eval
        self.cfg = cfg
        self.root = Path(e.davis)
        names = select_sequences(self.root, "val")
        self.seqs = load(self.root, "val", names[: e.sequences] if e.sequences else names)
        self.every = e.every or cfg.train.save_every
        self.protocol = TASKS["davis"].protocol(run_eval=e, short_side=e.size or None)
        self.work = Path(out_dir) / "eval"
        # A clip method's encoder is evaluated per frame (its method's frame_encoder); no timm ViT then.
        self.info = (
            None
            if METHODS[cfg.model.method].clips
            else EncoderInfo(timm_spec(cfg.model)[0], cfg.model.patch_size, cfg.model.img_size, "training")
        )

    def due(self, step: int, total: int) -> bool:
        return step == 0 or step % self.every == 0 or step == total

    def describe(self) -> str:
        return (
            f"J&F on {len(self.seqs)} sequence(s) of {self.root} every {self.every} steps "
            f"(protocol {self.protocol.name}, short side {self.protocol.short_side})"
        )

    def _eval_copy(self, encoder: torch.nn.Module) -> torch.nn.Module:
        """The training encoder's weights (copied) in a ViT that takes any input size, positions
        interpolated exactly as ``siammae propagate`` loads a checkpoint. Built on the meta device (or,
        for a clip encoder, with the random stream saved and restored): a random initialisation here
        would draw from, and so change, the training's random stream."""
        weights = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        if self.info is None:  # a clip encoder, fed frames as clips of copies
            with torch.random.fork_rng(devices=[]):
                return METHODS[self.cfg.model.method].frame_encoder(self.cfg, weights)
        vit = create_vit(self.info, dynamic=True)
        load_strict(vit, weights, "the training encoder")
        return vit

    def evaluate(self, encoder: torch.nn.Module, step: int, device) -> dict:
        """Propagate with ``encoder`` (the bare timm ViT) and score; never raises."""
        try:
            return self._evaluate(encoder, step, torch.device(device))
        except Exception as e:  # noqa: BLE001 - any failure is reported, training goes on
            return dict(step=step, eval_error=f"{type(e).__name__}: {e}")

    def _evaluate(self, encoder, step: int, device) -> dict:
        start = time.perf_counter()
        vit = self._eval_copy(encoder)
        results = self.work / "latest"
        if results.exists():
            shutil.rmtree(results)
        scores = TASKS["davis"].run(
            vit, self.root, results, self.protocol, data=self.seqs, device=device, progress=False
        )["scores"]
        diag = feature_diagnostics(vit, self.seqs, self.protocol, device, "fp32", self.root, with_copy=step == 0)
        record = dict(
            step=step,
            eval_jf=scores["J&F"],
            eval_j=scores["J"],
            eval_f=scores["F"],
            eval_mean_cosine=diag["mean_cosine"],
            eval_effective_rank=diag["effective_rank"],
            eval_position_share=diag["position_share"],
        )
        if step == 0:
            record["eval_copy_jf"] = diag["copy_jf"]
        record["eval_seconds"] = round(time.perf_counter() - start, 2)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}


def make_monitor(cfg) -> DavisMonitor | None:
    """The J&F monitor when ``eval.davis`` is set (its folder is checked now), else None."""
    if not cfg.eval.davis:
        return None
    try:
        return DavisMonitor(cfg, cfg.train.output_dir)
    except DavisError as e:
        raise ConfigError(f"eval.davis={cfg.eval.davis}: {e}") from None


def run_monitor(monitor: DavisMonitor, accelerator, model, step: int, out: Path, write=print) -> None:
    """Evaluate on rank 0 and log the record (metrics.jsonl, the run's trackers, ``write``) and redraw
    ``loss_curve.png``; the other ranks wait at a barrier, so none runs ahead into the next all-reduce."""
    if accelerator.is_main_process:
        record = monitor.evaluate(accelerator.unwrap_model(model).encoder, step, accelerator.device)
        append_metrics(out, record)
        if "eval_error" in record:
            write(f"warning: evaluation at step {step} failed (training goes on): {record['eval_error']}")
        else:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)  # no trackers: nothing
            write(describe_record(record))
        try:
            plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
        except Exception as e:  # noqa: BLE001 - a picture is never worth a run
            write(f"warning: loss_curve.png not drawn: {e}")
    accelerator.wait_for_everyone()


def describe_record(record: dict) -> str:
    copy = record.get("eval_copy_jf")
    return (
        f"step {record['step']}: J&F {record['eval_jf']:.3f}"
        + (f" (copying frame 0 in place: {copy:.3f})" if copy is not None else "")
        + f", token cosine {record['eval_mean_cosine']:.3f}, effective rank "
        f"{record['eval_effective_rank']:.1f}, position share {record['eval_position_share']:.3f} "
        f"[{record['eval_seconds']:.0f} s]"
    )
