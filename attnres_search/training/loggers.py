"""Lightning loggers for a run: TensorBoard, CSV, Weights & Biases, MLflow.

A Lightning user watches a run in the logger they already use, so every run can send what
it measures to any of Lightning's own loggers (``RunConfig.logger``, ``train --logger``,
``train.logger`` in a space). Each run is one logger run: named after its preset and seed
(``train``) or after its study, cell and seed (a study trial; the experiment/project is
the study), and it carries

- the hyperparameters: the whole resolved config, flattened (``model.residual.kind``, ...);
- the loss curves: ``train_loss`` and ``val_loss`` against the global step (what
  :class:`~attnres_search.training.lit_module.LitLM` logs);
- throughput: Lightning's :class:`~lightning.pytorch.callbacks.ThroughputMonitor` logs
  tokens/s (``train/device/items_per_sec``) over a sliding window;
- the diagnostics: per-sublayer output RMS and gradient norm at every snapshot
  (``diagnostics/output_rms/attn1``, ...) and the head's depth-mixing weights per source;
- a summary at the end: final and best validation loss, bits per byte, tokens/s over the
  whole run, FLOPs, parameters, wall time, and MFU where the device's peak is known.

Everything is written under ``log_dir`` (default: ``<out_dir>/logs``, else
``./lightning_logs``): ``tensorboard/<run>/``, ``csv/<run>/metrics.csv``, ``wandb/`` and
``mlflow.db`` (+ ``mlartifacts/``). Nothing goes over the network unless the user asked for
it: W&B runs offline unless ``WANDB_MODE=online`` is set, and MLflow writes a local store
unless ``MLFLOW_TRACKING_URI`` names another (the store is a local SQLite file, since
MLflow 3 keeps its plain file store read-only). W&B and MLflow are optional extras
(``pip install 'attnres-search[wandb]'`` / ``[mlflow]``); asking for one that is not
installed is bad input, found before anything is written.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import lightning as L

from attnres_search.errors import BadInput
from attnres_search.training.config import LOGGERS

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from attnres_search.training.config import RunConfig, RunResult

# logger -> (module it needs, pip extra that installs it)
_NEEDS = {"tensorboard": ("tensorboard", None), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
DEFAULT_EXPERIMENT = "attnres-search"
DEFAULT_LOG_DIR = "lightning_logs"
MLFLOW_DB = "mlflow.db"


def check_loggers(names: Iterable[str]) -> None:
    """Every name is a known logger, given once, and its package is importable: a missing
    extra is a one-line error naming the pip command, not an ImportError mid-run."""
    seen: set[str] = set()
    if isinstance(names, str):
        raise BadInput(f"logger must be a list of logger names ({', '.join(LOGGERS)}), got {names!r}")
    for name in names:
        if name not in LOGGERS:
            raise BadInput(f"unknown logger {name!r}; known: {', '.join(LOGGERS)}")
        if name in seen:
            raise BadInput(f"logger {name!r} is given twice")
        seen.add(name)
        module, extra = _NEEDS.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            hint = f"pip install 'attnres-search[{extra}]'" if extra else f"pip install {module}"
            raise BadInput(f"logger {name!r} needs the {module} package, which is not installed ({hint})")


def log_root(cfg: "RunConfig") -> Path:
    """Where the run's loggers write: ``log_dir``, else ``<out_dir>/logs``, else ``./lightning_logs``."""
    if cfg.log_dir is not None:
        return Path(cfg.log_dir)
    if cfg.out_dir is not None:
        return Path(cfg.out_dir) / "logs"
    return Path(DEFAULT_LOG_DIR)


def run_name(cfg: "RunConfig") -> str:
    """The run's name in every logger: ``cfg.run_name``, else the residual rule and seed."""
    return cfg.run_name or f"{cfg.model.residual.kind}-seed{cfg.seed}"


def safe_name(text: str) -> str:
    """A name usable as one folder: runs of anything but letters, digits and ``._=-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-") or "run"


def build_loggers(cfg: "RunConfig") -> list["Logger"]:
    """Lightning loggers for ``cfg.logger``, in the order given (the first is ``trainer.logger``)."""
    root = log_root(cfg)
    name = run_name(cfg)
    folder = safe_name(name)
    experiment = cfg.experiment or DEFAULT_EXPERIMENT
    out: list[Logger] = []
    for kind in cfg.logger:
        if kind == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(save_dir=str(root), name="tensorboard", version=folder,
                                         default_hp_metric=False))
        elif kind == "csv":
            from lightning.pytorch.loggers import CSVLogger

            out.append(CSVLogger(save_dir=str(root), name="csv", version=_free_version(root / "csv", folder)))
        elif kind == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            online = os.environ.get("WANDB_MODE", "").lower() == "online"
            (root / "wandb").mkdir(parents=True, exist_ok=True)
            out.append(WandbLogger(name=name, project=safe_name(experiment), save_dir=str(root),
                                   offline=not online, settings=_wandb_settings()))
        elif kind == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            artifacts = None
            if not uri:  # a local SQLite store: MLflow's plain file store is read-only ("maintenance mode") since 3.x
                root.mkdir(parents=True, exist_ok=True)
                uri = f"sqlite:///{(root / MLFLOW_DB).resolve()}"
                artifacts = (root / "mlartifacts").resolve().as_uri()
            for noisy in ("mlflow.store.db.utils", "alembic"):  # schema set-up lines on every new store
                logging.getLogger(noisy).setLevel(logging.WARNING)
            out.append(MLFlowLogger(experiment_name=experiment, run_name=name, tracking_uri=uri,
                                    artifact_location=artifacts))
        else:  # check_run refused it already
            raise BadInput(f"unknown logger {kind!r}; known: {', '.join(LOGGERS)}")
    return out


def _free_version(parent: Path, folder: str) -> str:
    """``folder``, or ``folder.2``, ``folder.3``... when a metrics file is there already:
    Lightning's CSV writer deletes an existing ``metrics.csv``, and a resumed run (a
    retried trial, ``train --resume``) must not erase what the earlier attempt logged."""
    version, n = folder, 1
    while (parent / version / "metrics.csv").exists():
        n += 1
        version = f"{folder}.{n}"
    return version


def _wandb_settings() -> Any:
    """Quiet W&B settings: no console capture (a study worker runs many trials in one
    process and owns its terminal), no git or code snapshot."""
    import wandb

    return wandb.Settings(console="off", save_code=False, disable_git=True, silent=True)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested config as one level of ``a.b.c`` keys, lists as text: every logger shows
    scalars and strings, and not all of them flatten nested dicts alike."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        elif value is None:
            out[name] = "none"
        else:
            out[name] = value
    return out


def throughput_monitor(cfg: "RunConfig", steps: int) -> L.Callback:
    """Lightning's ThroughputMonitor, counting tokens per batch; its window spans a fifth of
    the run (2 to 100 batches) so short runs still report a rate. It is given no FLOPs per
    batch: its MFU would divide by Lightning's peak table, which mixes dense and sparse
    figures; the summary's MFU uses ours (:func:`model_flops_utilization`)."""
    from lightning.pytorch.callbacks import ThroughputMonitor

    return ThroughputMonitor(batch_size_fn=lambda batch: int(batch[0].shape[0]),
                             length_fn=lambda batch: int(batch[0].numel()),
                             window_size=max(2, min(100, steps // 5)))


class RunLogging(L.Callback):
    """Sends the hyperparameters and every diagnostics snapshot to the trainer's loggers.
    The loss curves reach them through the module's own ``self.log`` calls, throughput
    through :func:`throughput_monitor`, MFU with the summary (:func:`finish_loggers`)."""

    def __init__(self, cfg: "RunConfig", params: Mapping[str, Any], diagnostics: Any) -> None:
        self.cfg = cfg
        self.params = dict(params)
        self.diagnostics = diagnostics
        self._sent = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sent = len(self.diagnostics.snapshots)  # a resumed run's older snapshots were sent before
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams(self.params)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        snapshots = self.diagnostics.snapshots
        if len(snapshots) <= self._sent:
            return
        if trainer.is_global_zero:
            names = _layer_names(pl_module)
            for snap in snapshots[self._sent:]:
                metrics = diagnostics_metrics(snap, names)
                for logger in trainer.loggers:  # at Lightning's step index, as the losses are
                    logger.log_metrics(metrics, step=max(0, int(snap["step"]) - 1))
        self._sent = len(snapshots)


def _layer_names(pl_module: L.LightningModule) -> list[str]:
    from attnres_search.training.diagnostics import sublayer_names

    return sublayer_names(pl_module.model.cfg.n_sublayers)


def diagnostics_metrics(snapshot: Mapping[str, Any], layer_names: list[str]) -> dict[str, float]:
    """One diagnostics snapshot as scalars: output RMS and gradient norm per sublayer, and the
    depth-mixing weight the head's aggregation puts on each source (AttnRes rules)."""
    metrics: dict[str, float] = {}
    for key in ("output_rms", "grad_norm"):
        for name, value in zip(layer_names, snapshot.get(key) or []):
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[f"diagnostics/{key}/{name}"] = float(value)
    alpha = snapshot.get("alpha")
    if alpha and alpha[-1] is not None:
        sources = (snapshot.get("sources") or [None])[-1] or []
        for j, value in enumerate(alpha[-1]):
            label = str(sources[j]).split("^")[0] if j < len(sources) else str(j)
            metrics[f"diagnostics/alpha_head/{safe_name(label)}"] = float(value)
    return metrics


def summary_metrics(result: "RunResult") -> dict[str, float]:
    """What a finished run measured, as scalars (NaN and missing values left out; MFU only
    where the device's peak is known, see :func:`model_flops_utilization`)."""
    values: dict[str, Any] = {
        "final_val_loss": result.final_val_loss,
        "best_val_loss": result.best_val_loss,
        "final_val_bpb": result.final_val_bpb,
        "tokens_per_s": result.tokens_per_s,
        "tokens": result.tokens,
        "flops_total": result.flops_total,
        "flops_per_token": result.flops_per_token,
        "params_total": result.params_total,
        "wall_time_s": result.wall_time_s,
        "mfu": model_flops_utilization(result),
    }
    return {f"summary/{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def model_flops_utilization(result: "RunResult") -> float | None:
    """The run's MFU where its device's peak is known (:func:`attnres_search.training.mfu.run_mfu`:
    the dense-bf16 datasheet table for CUDA devices, or a ``peak_tflops`` in the config), else
    None, as on a plain CPU. That table, not Lightning's, which mixes dense and sparse peaks."""
    from attnres_search.training.mfu import run_mfu

    _, value = run_mfu(result.flops_per_token, result.tokens_per_s, result.device_name,
                       int(result.config.get("devices") or 1), result.config.get("peak_tflops"))
    return value


def finish_loggers(loggers: Iterable["Logger"], result: "RunResult | None", status: str = "success") -> None:
    """Log the run's summary (when there is one) and close every logger run, as finished,
    failed or (``interrupted``: SIGTERM, to be resumed) killed. A study worker runs many
    trials in one process, and W&B would otherwise append the next trial to this run.
    Best effort: a logger that cannot write is a warning, never a lost run."""
    for logger in loggers:
        try:
            if result is not None:
                logger.log_metrics(summary_metrics(result), step=max(0, result.steps - 1))
            logger.finalize("success" if status == "success" else "failed")
            kind = type(logger).__name__
            if kind == "WandbLogger":
                logger.experiment.finish(exit_code=0 if status == "success" else 1)
            elif kind == "MLFlowLogger" and status == "interrupted":
                logger.experiment.set_terminated(logger.run_id, "KILLED")
        except Exception as exc:  # noqa: BLE001 - the run's own record is written already
            warnings.warn(f"logger {type(logger).__name__} could not finish: {exc}", stacklevel=2)
