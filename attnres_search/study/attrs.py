"""The names under which a study keeps what it knows in Optuna's user attributes.

Study attributes hold the whole validated space, so that resuming, reporting and status
never depend on the space file still being there or unchanged. Trial attributes hold the
cell a trial runs and everything its run measured. They are the storage's schema for
this package: the worker writes them, status and reports read them.
"""

from __future__ import annotations

# Study user attributes.
ATTR_SPACE = "space"  # the space's source mapping (re-validated on load)
ATTR_SPACE_NAME = "space_name"
ATTR_KIND = "kind"  # report kind
ATTR_BASELINE = "baseline"
ATTR_CELLS = "n_cells"  # grid cells x seeds
ATTR_VERSION = "attnres_search_version"
ATTR_STUDY_ID = "study_uuid"  # a random id made at creation: run folders are keyed by it
ATTR_HEARTBEAT_INTERVAL = "heartbeat_interval_s"  # seconds between a running trial's heartbeats
ATTR_HEARTBEAT_GRACE = "heartbeat_grace_s"  # seconds without one after which a trial counts as dead
ATTR_LOOKS = "design_looks"  # the looks a sequential design took: [{look, pairs, decisions, recorded_at, by, ...}]

# Trial user attributes (besides every RunResult field but ``config``).
ATTR_CELL = "cell"  # cell_key of the trial's parameters
ATTR_SKIPPED = "skipped"  # a duplicate the objective refused before training
ATTR_ERROR = "error"  # "ExceptionType: message" of a failed run
ATTR_LOG = "log"  # path of the trial's log file (tracebacks of failures)
ATTR_RETRY = "retry_reason"  # set on a FAIL trial that failed through no fault of its run (interrupted,
#                              disk full): every worker re-runs its cell, not only `study resume`
ATTR_SLURM_JOB = "slurm_job"  # ARRAYJOB_TASK (+restarts) of the Slurm array task that ran the trial
