"""The one-line error helpers: an underlying error's text is never cut mid-word."""

from __future__ import annotations

import pytest

from tasks.errors import brief


def test_a_long_line_is_cut_at_a_word_boundary_and_marked() -> None:
    words = "the operator is not supported by this runtime, use a newer opset instead " * 6
    line = brief(RuntimeError(words), limit=100)
    assert line.endswith(" …"), line
    kept = line.removesuffix(" …")
    assert len(kept) <= 100
    assert words.startswith(kept)
    assert words[len(kept)] == " ", f"cut mid-word: {line!r}"


@pytest.mark.parametrize("limit", range(60, 90))
def test_no_limit_cuts_a_word(limit: int) -> None:
    text = "Protobuf parsing failed: use torch.onnx.export(..., dynamo=True) instead of the legacy"
    kept = brief(text, limit=limit).removesuffix(" …")
    assert text.startswith(kept)
    assert text == kept or not text[len(kept)].isalnum(), f"cut mid-word: {kept!r}"


def test_first_or_last_non_empty_line_without_colour_codes() -> None:
    text = "\n  \x1b[1mWeights only load failed\x1b[0m.\nmore\n\nlast line\n"
    assert brief(text) == "Weights only load failed."
    assert brief(text, last_line=True) == "last line"


def test_an_empty_message_names_the_exception_type() -> None:
    assert brief(KeyError()) == "KeyError"
    assert brief("") == ""


def test_one_word_longer_than_the_limit_is_kept_whole() -> None:
    path = "/very/" + "deep/" * 80 + "model.onnx"
    assert brief(path, limit=50) == path


@pytest.mark.parametrize(
    ("exit_code", "expected"),
    [
        (3, "exited with code 3"),
        (-15, "was killed by SIGTERM"),
        (
            -9,
            "was killed by SIGKILL (the kernel's out-of-memory killer sends SIGKILL: is memory short?)",
        ),
        (-200, "was killed by signal 200"),
    ],
)
def test_process_ended_reads_the_exit_code(exit_code: int, expected: str) -> None:
    from tasks.errors import process_ended

    assert process_ended(exit_code) == expected


def test_an_unreachable_repo_says_gits_reason_not_its_advice() -> None:
    """It printed `(['and the repository exists.'])`: git's last line, as a Python list."""
    from tasks.errors import FetchError
    from tasks.fetch import resolve_rev

    with pytest.raises(FetchError) as error:
        resolve_rev("ssh://127.0.0.1:1/nowhere.git", "main", "fetch.model_rev")
    message = str(error.value)
    assert message.startswith("fetch.repo: cannot reach ssh://127.0.0.1:1/nowhere.git (")
    assert "[" not in message and "and the repository exists" not in message
    assert "\n" not in message
