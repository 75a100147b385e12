"""What every fedrec command line does the same way: clear errors instead of tracebacks, thread settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from shared.errors import FedrecError


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a ``FedrecError`` becomes one red line on stderr and exit code 2, never a traceback."""
    try:
        return main(argv)
    except FedrecError as err:
        # escape: a message holding "[...]" (paths, column names) must not be read as markup;
        # soft_wrap: one line even when stderr is not a terminal (rich would wrap at 80 columns).
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        return 130


def set_torch_threads() -> None:
    """Use every core for intra-op parallelism unless the user chose (``FEDREC_THREADS``)."""
    import torch

    threads = int(os.environ.get("FEDREC_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(max(1, threads))


def exit_with(code: int) -> None:
    sys.exit(code)
