"""Make sure the datasets a run needs are in the data directory before anything starts.

Why: `make reproduce` on a fresh machine should fetch what is missing (when online) instead of
starting a dozen runs that each fail on the same missing file, and stop with ONE line naming
`make data` when it cannot fetch. Present files are never touched (only ``stat`` calls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, TextIO

from softmax_approx.data.datasets import shipped
from softmax_approx.data.files import check_files, fetch_command
from softmax_approx.utils.errors import DataError



def ensure_data(tasks: Iterable[str], data_dir: str | Path, stream: TextIO | None = None,
                fetch: Callable[[str, Path], object] | None = None) -> list[str]:
    """Download the datasets of ``tasks`` that are missing from ``data_dir``; return their names.

    Raises one-line :class:`DataError` when a missing dataset cannot be fetched (offline, or
    IWSLT'14, which is not redistributable), naming `make data` and the dataset's own command.
    """
    data_dir = Path(data_dir)
    fetched: list[str] = []
    for task in sorted(set(tasks)):
        try:
            check_files(task, data_dir)
            continue
        except DataError:
            pass
        dataset = shipped(task, data_dir).download or task  # iwslt14_mini: iwslt14's recipe
        if stream is not None:
            print(f"data: {task} is missing from {data_dir}; fetching {dataset}", file=stream, flush=True)
        try:
            if fetch is None:
                from softmax_approx.data.download import download as fetch
            fetch(dataset, data_dir)
            check_files(task, data_dir)
        except DataError as e:
            raise DataError(
                f"task {task}: data missing from {data_dir} and could not be fetched ({e}); when online, "
                f"fetch it with {fetch_command(task, data_dir)}, or point DATA_DIR at a copy"
            ) from None
        fetched.append(dataset)
    return fetched
