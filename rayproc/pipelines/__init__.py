"""Pipelines: the functions the CLI and jobs/ call; they join the core to storage and Ray."""
