"""Settings validation that every entry point shares (issue 19, item 2): an empty or
whitespace token is no token, and is refused before anything listens — by ``Settings``,
by ``create_app()`` reading the environment, and by a real ``docl serve`` process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from docl.services.config import Settings

BAD_TOKENS = ["", " ", "\t", "  \t ", " padded ", "line\nbreak"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCL_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_settings_refuse_an_empty_or_whitespace_token(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="DOCL_API_TOKEN"):
        Settings(api_token=token)
    monkeypatch.setenv("DOCL_API_TOKEN", token)
    with pytest.raises(ValidationError, match="DOCL_API_TOKEN"):
        Settings()


def test_create_app_refuses_an_empty_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from docl.services.app import create_app

    monkeypatch.setenv("DOCL_API_TOKEN", "")
    with pytest.raises(ValidationError, match="empty or whitespace"):
        create_app()
    monkeypatch.setenv("DOCL_API_TOKEN", "a-real-token")
    create_app()  # builds (the lifespan, which starts Redis, is not entered)


def test_a_real_token_and_no_token_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = Settings(api_token="s3cret-Token_0")
    assert tok.api_token is not None and tok.api_token.get_secret_value() == "s3cret-Token_0"
    monkeypatch.delenv("DOCL_API_TOKEN", raising=False)
    assert Settings().api_token is None


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--token", ""], {}),
        (["--token", "   "], {}),
        ([], {"DOCL_API_TOKEN": ""}),
        ([], {"DOCL_API_TOKEN": " \t"}),
    ],
    ids=["flag-empty", "flag-spaces", "env-empty", "env-whitespace"],
)
def test_docl_serve_refuses_an_empty_token_on_a_public_address(
    args: list[str], env: dict[str, str]
) -> None:
    """The issue's reproducer: before the fix ``docl serve --host 0.0.0.0 --token ""``
    started, and ``GET /v1/runs`` answered 200 without a token. (If this test ever
    regressed, the child would bind 0.0.0.0: the timeout below stops it.)"""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from docl.client.cli import main; main()", "serve",
             "--host", "0.0.0.0", "--port", "0", *args],
            capture_output=True, text=True, timeout=30, env=_clean_env(**env),
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"docl serve started with an empty token: {e.stderr!r}")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in ("DOCL_API_TOKEN", "empty or whitespace", "--token"):
        assert word in lines[0], lines[0]


def test_partition_samples_is_read_by_its_name_and_by_its_deprecated_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from docl.services.config import Settings

    monkeypatch.delenv("DOCL_PARTITION_SAMPLES", raising=False)
    monkeypatch.delenv("DOCL_SHARD_SAMPLES", raising=False)
    with caplog.at_level("WARNING", logger="docl.services"):
        assert Settings().partition_samples == 0
        monkeypatch.setenv("DOCL_PARTITION_SAMPLES", "80")
        assert Settings().partition_samples == 80
        assert Settings(partition_samples=7).partition_samples == 7
        assert "deprecated" not in caplog.text
        monkeypatch.delenv("DOCL_PARTITION_SAMPLES")
        monkeypatch.setenv("DOCL_SHARD_SAMPLES", "90")
        assert Settings().partition_samples == 90
        assert "DOCL_SHARD_SAMPLES is deprecated: it is DOCL_PARTITION_SAMPLES now" in caplog.text
        monkeypatch.delenv("DOCL_SHARD_SAMPLES")
        caplog.clear()
        assert Settings(shard_samples=5).partition_samples == 5  # type: ignore[call-arg]
        assert "DOCL_SHARD_SAMPLES is deprecated" in caplog.text
