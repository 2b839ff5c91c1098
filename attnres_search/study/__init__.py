"""Optuna studies over search spaces. One module per concern, in the order a study flows:

- ``space``: the schema of a search space (dataclasses) and how a cell becomes a run.
- ``space_file``: reading a space from YAML, every key validated and coerced.
- ``cells``: cell expansion, cell keys, labels and folder names.
- ``rules``: the residual rules as a space sees them (the one import of rule configs).
- ``space_checks``: the trainer's checks applied to every run before a study exists.
- ``samplers``, ``pruners``: the Optuna sampler and pruner of a space.
- ``storage``: the storage URL, opened in create / write / read mode (SQLite specifics).
- ``handle``: :class:`~attnres_search.study.handle.StudyHandle`, one open study (Optuna
  study + space + storage) that the CLI opens once and passes down; create, open, delete.
- ``attrs``: the names of the study's and trials' stored attributes.
- ``objective``: one trial = one training run; ``callbacks``: its Lightning callbacks.
- ``attempts``: one run folder per trial attempt, keyed by study and config; checkpoints
  handed on to a retry by copy, corrupt ones moved aside.
- ``worker``: the loop that claims and runs trials, with Ctrl-C handling.
- ``heartbeats``: running trials' heartbeat ages; trials that never beat.
- ``trial_logs``: each trial's log file, where Optuna's tracebacks go.
- ``status``: where a study stands, failures and superseded failures.
- ``launch``: worker processes per GPU or CPU, and their combined progress.

Nothing here imports the CLI; heavy imports (torch, Lightning) stay inside functions so
that reading a space or a study's status stays quick.
"""
