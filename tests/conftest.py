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


def read_listing(variant_short: str, mode: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of an official state dict, e.g. read_listing('pico', 'deploy')."""
    rows = {}
    for line in (DATA / "state_dicts" / f"{variant_short}_{mode}.tsv").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        rows[name] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return rows
