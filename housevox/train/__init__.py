"""Training: the LightningModule, optimizer and schedule, callbacks, atomic checkpoints."""
