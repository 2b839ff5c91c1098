"""Putting a study's evidence where researchers look: optuna-dashboard.

Each finished trial's ``run.json`` and figures are uploaded as Optuna artifacts to a
file-system artifact store next to the database (``studies.db`` -> ``studies.db.artifacts/``;
for a server database, ``runs/artifacts/`` or ``$ATTNRES_ARTIFACTS``), which ``dashboard``
serves; the report goes on the study's page through :mod:`attnres_search.reports.dashboard`.
Uploading is best effort: a trial's result is already stored when its artifacts go up, so
a failed upload is a warning, never a lost trial.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

ENV_ARTIFACTS = "ATTNRES_ARTIFACTS"
log = logging.getLogger(__name__)


def artifact_dir(url: str, runs_root: Path) -> Path:
    """Where a storage's artifacts live."""
    if os.environ.get(ENV_ARTIFACTS):
        return Path(os.environ[ENV_ARTIFACTS])
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        return db.parent / f"{db.name}.artifacts"
    return runs_root / "artifacts"


def artifact_store(url: str, runs_root: Path, *, create: bool) -> Any | None:
    """The store for ``url``; ``None`` when it does not exist and ``create`` is false (a
    read-only command never makes folders)."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = artifact_dir(url, runs_root)
    if not folder.is_dir():
        if not create:
            return None
        folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def upload_run_artifacts(trial: "optuna.Trial", run_dir: Path, store: Any) -> list[str]:
    """Upload ``run.json`` and the run's figures (drawn now, into ``run_dir/plots``) to
    ``trial``. Returns the uploaded file names."""
    from optuna.artifacts import upload_artifact

    from attnres_search.reports.run_plots import plot_run

    run_json = run_dir / "run.json"
    if not run_json.exists():
        return []
    files = [run_json]
    try:
        files += plot_run(run_json, run_dir / "plots")
    except (OSError, ValueError) as exc:
        log.warning("could not draw the figures of %s: %s", run_dir, exc)
    uploaded = []
    for path in files:
        try:
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
            uploaded.append(path.name)
        except Exception as exc:  # noqa: BLE001 - never lose a completed trial over an upload
            log.warning("could not upload %s as an artifact: %s", path, exc)
    return uploaded
