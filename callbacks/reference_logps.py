"""Precomputed reference log-probs for DPO: attach them to the DataModule's splits before training."""

from __future__ import annotations

import lightning as L

from zephyr_lightning.reference import COLUMNS, ReferenceLogpsStore, attach_reference_logps


class PrecomputedReference(L.Callback):
    """Run the DPO reference once over the DataModule's splits (or reuse stored results) and add the
    log-prob columns the DPO step reads instead of a live reference.

    `DPOModule(precompute_reference=True)` adds this callback itself (``configure_callbacks``). It runs
    at ``setup``, before the module's ``configure_model``, so the reference is never loaded for training.
    With several processes each computes a share (see `attach_reference_logps`).
    """

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "datasets") or not hasattr(datamodule, "collator"):
            raise TypeError("precompute_reference=True needs a DataModule with `datasets` and `collator` "
                            "(e.g. PreferenceDataModule)")
        if all(COLUMNS[0] in data.column_names for data in datamodule.datasets.values()):
            return
        source = pl_module.reference if pl_module.reference is not None else pl_module.reference_spec
        if source is None:
            raise ValueError("precompute_reference=True with a policy given as a ready model that trains adapters: "
                             "give the policy as a ModelSpec, or the reference explicitly (reference=...)")
        datamodule.datasets.update(
            attach_reference_logps(
                datamodule.datasets,
                datamodule.collator,
                source,
                store=ReferenceLogpsStore(self.cache_dir),
                batch_size=getattr(datamodule, "eval_batch_size", None) or 8,
                device=trainer.strategy.root_device,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                barrier=trainer.strategy.barrier,
                prepare_model=trainer.precision_plugin.convert_module,
                forward_context=trainer.precision_plugin.forward_context,
            )
        )
        # The numbers are all training needs: free a reference that was handed in as a model.
        pl_module.reference = None
