"""Every test gets its own decoded-image cache folder, so none writes to the user's cache."""

from __future__ import annotations

import pytest

from trainables.datasets.cache import CACHE_DIR_ENV


@pytest.fixture(autouse=True)
def _decoded_cache_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("decoded-cache")))
