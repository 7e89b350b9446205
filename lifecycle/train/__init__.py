"""Pretraining: the loop (pretrain), one optimizer step (trainer), data order and bits per byte (data),
evaluation (evaluate), atomic checkpoints (checkpoint), DDP/FSDP (distributed), MFU (flops) and MLflow
hooks (tracking). Importing the package imports nothing heavy; import the module you need."""
