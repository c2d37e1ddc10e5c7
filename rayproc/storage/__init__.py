"""Storage shell: zarr v3 datasets at local paths or ``s3://`` URLs, opened with xarray."""

from rayproc.storage.dataset import (
    ArraySpec,
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
    zarr_store,
)
from rayproc.storage.location import Location, filesystem, parse_storage_options, redacted, resolve

__all__ = [
    "ArraySpec",
    "Location",
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
    "with_retries",
    "write_dataset",
    "write_task",
    "zarr_store",
]
