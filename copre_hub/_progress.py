"""Progress bars: only copre-hub's own while a verb or the demo runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def only_our_progress_bars() -> Iterator[None]:
    """Turn huggingface_hub's (downloads, uploads, hf_xet) and datasets' progress bars off for the block."""
    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hub_was_off, datasets_was_on = are_progress_bars_disabled(), datasets.is_progress_bar_enabled()
    disable_progress_bars()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if datasets_was_on:
            datasets.enable_progress_bars()
