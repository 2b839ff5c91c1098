"""Training one model: what a run is asked and answers (:mod:`.config`), the checks every
run passes before anything is written (:mod:`.checks`), the orchestration (:mod:`.run`),
the Trainer factory and precision choice (:mod:`.trainer`), the LightningModule
(:mod:`.lit_module`), optimizers and schedules (:mod:`.optim`), callbacks for timing and
preemption (:mod:`.callbacks`), the progress display (:mod:`.progress`), diagnostics
(:mod:`.diagnostics`), multi-device trials (:mod:`.ddp`), provenance (:mod:`.provenance`)
and the data sources, shards, batches and DataModule (:mod:`.data`).

Nothing is imported here, so ``import attnres_search.training.config`` stays cheap.
"""
