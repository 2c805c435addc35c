"""The expensive tasks' cache key: their inputs and code, not the params file's folder."""

from __future__ import annotations

import inspect

from flows.stages import baseline_task, prepare_task
from flows.variants import CACHED_INPUTS


def test_the_params_folder_is_not_part_of_the_key() -> None:
    """The same params.yaml in another folder (same data and weights, hashed by content
    elsewhere in the inputs) is served from the cache; any other input changes the key."""
    here = {"cfg": {"epochs": 3}, "base_key": "k1", "root": "/home/a/project"}
    elsewhere = here | {"root": "/tmp/copy"}
    other = here | {"base_key": "k2"}
    key = CACHED_INPUTS.compute_key(None, here, {})
    assert key == CACHED_INPUTS.compute_key(None, elsewhere, {})
    assert key != CACHED_INPUTS.compute_key(None, other, {})


def test_the_cached_tasks_name_the_folder_root() -> None:
    """The exclusion is by parameter name: a rename would put the folder back into the key."""
    for cached in (prepare_task, baseline_task):
        assert "root" in inspect.signature(cached.fn).parameters
