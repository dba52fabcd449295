"""Shared test setup: one torch thread (the CI machine is a shared 2-core box where two threads
mostly wait on each other), and the official state-dict listings."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


Listing = dict[str, tuple[tuple[int, ...], str]]


def read_listing(variant: str, mode: str, prefix: str = "") -> Listing:
    """{key: (shape, dtype)} of an official state dict in file order, e.g. read_listing('deimv2-pico',
    'deploy', prefix='decoder.'); only keys under `prefix`, with the prefix removed."""
    rows = {}
    short = variant.removeprefix("deimv2-")
    for line in (DATA / "state_dicts" / f"{short}_{mode}.tsv").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        if name.startswith(prefix):
            rows[name[len(prefix):]] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return rows


def listing(module) -> Listing:
    """The same {key: (shape, dtype)} view of a module's state dict."""
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}
