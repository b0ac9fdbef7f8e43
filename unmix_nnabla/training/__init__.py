"""Training: the graph (graph), one step and validation (step), a run with its resume and fine-
tuning (run), the losses (loss), checkpoints, the schedule, statistics, monitors, and MPI/NCCL
communicators (comm)."""
