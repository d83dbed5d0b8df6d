"""Shared fixtures: one CPU thread per test process, and one base-model cache per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory: pytest.TempPathFactory):
    """The digits reference CNN trains once per test session, not once per test."""
    cache = tmp_path_factory.mktemp("base-cache")
    os.environ["COMPRESS_SEARCH_CACHE"] = str(cache)
    yield cache


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run inside a temporary project folder (run folders land under it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
