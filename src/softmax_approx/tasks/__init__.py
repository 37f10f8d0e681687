"""LightningModules: shared machinery in :mod:`.base`, one subclass per task kind."""
