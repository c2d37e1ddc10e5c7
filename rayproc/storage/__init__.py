"""Storage shell: zarr v3 datasets at local paths or ``s3://`` URLs, opened with xarray."""

from rayproc.storage.dataset import (
    ArraySpec,
    append_variables,
    command_line,
    create_dataset,
    done_tasks,
    finalize,
    is_complete,
    open_dataset,
    provenance,
    with_retries,
    write_dataset,
    write_task,
    task_tables,
    zarr_store,
)
from rayproc.storage.location import Location, filesystem, parse_storage_options, redacted, resolve

__all__ = [
    "ArraySpec",
    "Location",
    "append_variables",
    "command_line",
    "create_dataset",
    "done_tasks",
    "filesystem",
    "finalize",
    "is_complete",
    "open_dataset",
    "parse_storage_options",
    "provenance",
    "redacted",
    "resolve",
    "task_tables",
    "with_retries",
    "write_dataset",
    "write_task",
    "zarr_store",
]
