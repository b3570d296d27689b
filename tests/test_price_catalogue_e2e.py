"""The price catalogue through the real stack: the ext_proc reads the mock upstream's
`/models`, stores it in Postgres, exports its age; `llm-gateway catalogue show|refresh`; a bad
answer keeps the last good table; a replica restarted with the upstream down still has prices.

Expected prices: the mock's `/models` says "0.0000003" USD per prompt token, "0.0000015" per
completion token and "0.000000075" per cached token (docs/mock-upstream.md), which are
300,000, 1,500,000 and 75,000 picodollars (10^-12 USD)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from extproc.local.processes import free_port
from tests.conftest import Gateway, running_stack

PROMPT, COMPLETION, CACHE_READ = 300_000, 1_500_000, 75_000
_AGE = re.compile(r'^llm_gateway_price_catalogue_age_seconds\{provider="(\w+)"\} (\S+)$', re.MULTILINE)


def stored_models(gateway: Gateway, provider: str) -> int:
    rows = gateway.sql("SELECT count(*) AS n FROM gateway_price_catalogue WHERE provider = $1", provider)
    return int(rows[0]["n"])


def wait_until(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def ages(gateway: Gateway) -> dict[str, float]:
    return {provider: float(value) for provider, value in _AGE.findall(gateway.metrics())}


def cli(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args],
        env=_cli_env(gateway),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cli_env(gateway: Gateway) -> dict[str, str]:
    import os

    return {
        **{k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_URL"))},
        **gateway.env,
        "LLM_GATEWAY_DATA_DIR": str(gateway.data_dir),
        "DATABASE_URL": gateway.database_url,
    }


def test_the_mocks_models_feed_the_catalogue_and_show_prints_exact_integers(gateway: Gateway) -> None:
    wait_until(
        lambda: stored_models(gateway, "openrouter") > 0 and stored_models(gateway, "vercel") > 0,
        "the ext_proc to store both price tables",
    )
    shown = gateway.cli("catalogue", "show", "z-ai/glm-5")
    assert shown["model"] == "z-ai/glm-5"
    openrouter, vercel = shown["providers"]["openrouter"], shown["providers"]["vercel"]
    assert openrouter["listed"] is True and vercel["listed"] is True
    assert vercel["model_id"] == "zai/glm-5"  # contract 3.6
    for prices in (openrouter["prices"], vercel["prices"]):
        assert (prices["prompt"], prices["completion"], prices["input_cache_read"]) == (PROMPT, COMPLETION, CACHE_READ)
        assert prices["context_length"] == 1_000_000 and prices["max_completion_tokens"] == 65_536
        assert all(type(value) is int for key, value in prices.items() if key != "model_id")
    assert openrouter["table"]["models"] == stored_models(gateway, "openrouter")

    # A model the catalogue does not list is shown at the table's highest prices.
    unknown = gateway.cli("catalogue", "show", "nobody/knows")["providers"]["openrouter"]
    assert unknown["listed"] is False and unknown["prices"]["completion"] == COMPLETION

    # Every worker's copy is loaded: the age metric is finite and well under the alert's hour.
    wait_until(lambda: set(ages(gateway)) >= {"openrouter", "vercel"}, "the catalogue age metric")
    assert all(0 <= age < 3600 for age in ages(gateway).values()), ages(gateway)


def test_a_bad_answer_keeps_the_last_good_table(gateway: Gateway) -> None:
    wait_until(lambda: stored_models(gateway, "openrouter") > 0, "the stored price table")
    before = gateway.sql(
        "SELECT model_id, prompt, completion FROM gateway_price_catalogue WHERE provider = 'openrouter' ORDER BY model_id"
    )
    # One model given away for nothing, the rest unpriceable: a broken answer, not new prices.
    free = {"id": "acme/free", "context_length": 1000, "pricing": {"prompt": "0", "completion": "0"}}
    bad = [{"id": f"acme/{i}", "context_length": 1000, "pricing": {"prompt": "-1", "completion": "NaN"}} for i in range(3)]
    garbage = {"data": [free, *bad]}
    try:
        for override in (
            {"body": garbage},
            {"raw": '{"data": [{"id": "cut'},
            {"status": 503, "body": {"error": "down"}},
        ):
            httpx.put(f"{gateway.mock_url}/__mock/models", json=override).raise_for_status()
            result = cli(gateway, "catalogue", "refresh")
            assert result.returncode == 1, result
            assert "no price catalogue refreshed" in orjson.loads(result.stderr.splitlines()[-1])["error"], result.stderr
            after = gateway.sql(
                "SELECT model_id, prompt, completion FROM gateway_price_catalogue WHERE provider = 'openrouter' ORDER BY model_id"
            )
            assert after == before
            error = gateway.sql("SELECT last_error FROM gateway_price_catalogue_refresh WHERE provider = 'openrouter'")
            assert error[0]["last_error"]  # why, for the operator
    finally:
        httpx.delete(f"{gateway.mock_url}/__mock/models").raise_for_status()
    refreshed = gateway.cli("catalogue", "refresh")["providers"]
    assert refreshed["openrouter"]["stored"] is True and refreshed["vercel"]["stored"] is True
    assert refreshed["openrouter"]["models"] == len(before)


def test_a_replica_started_with_the_upstream_down_has_the_stored_prices(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with running_stack(tmp_path / "first", DATABASE_URL=database_url) as first:
        wait_until(lambda: stored_models(first, "openrouter") > 0, "the first stack to store prices")
        stored = stored_models(first, "openrouter")
    dead = f"http://127.0.0.1:{free_port()}"
    down = {
        "DATABASE_URL": database_url,
        "OPENROUTER_API_KEY": "sk-test",  # the stack starts no mock: every provider is unreachable
        "OPENROUTER_API_URL": f"{dead}/api/v1",
        **{
            f"{name}_API_URL": f"{dead}/{name.lower()}"
            for name in ("VERCEL_AI_GATEWAY", "CORETHINK", "MARTIAN", "MISTRAL")
        },
    }
    with running_stack(tmp_path / "second", **down) as second:
        wait_until(lambda: "openrouter" in ages(second), "the age metric")
        age = ages(second)["openrouter"]
        assert math.isfinite(age) and age < 3600  # loaded from Postgres, not +Inf
        shown = second.cli("catalogue", "show", "openai/gpt-4o")["providers"]["openrouter"]
        assert shown["listed"] is True and shown["prices"]["prompt"] == PROMPT
        assert shown["table"]["models"] == stored
        # Asking the provider now fails, and the stored table stays.
        result = cli(second, "catalogue", "refresh")
        assert result.returncode == 1
        assert stored_models(second, "openrouter") == stored
