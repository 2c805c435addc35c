"""The run's plan: content keys (work directories and cache entries) and build order."""

from __future__ import annotations

import hashlib
import json

from tasks.params_file import parse_params
from tasks.plan import content_key, in_dependency_order


def test_a_key_is_the_sha256_of_the_parts_as_sorted_json() -> None:
    params = parse_params({})
    expected = json.dumps(
        [params.data.model_dump(mode="json"), 7, {"b": 1, "a": 2}], sort_keys=True
    )
    key = content_key(params.data, 7, {"a": 2, "b": 1})
    assert key == hashlib.sha256(expected.encode()).hexdigest()[:16]
    assert key != content_key(params.data.model_copy(update={"image_size": 8}), 7, {"a": 2, "b": 1})


def test_a_combination_is_built_after_its_source() -> None:
    params = parse_params(
        {
            "variants": {
                "pruned_int8": {"technique": "tflite_int8", "source": "pruned"},
                "pruned": {"technique": "pruned", "source": "baseline"},
            }
        }
    )
    order = [name for name, _ in in_dependency_order(params.variants)]
    assert order.index("pruned") < order.index("pruned_int8")
