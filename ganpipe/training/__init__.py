"""The `train` stage: the loop, the step, losses, augmentation, snapshot probes, resume and DDP."""
