"""One configuration: defaults < YAML file < environment, with the operators' fixed names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from extproc.settings import load_settings


def test_defaults_are_the_contracts_provider_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENROUTER_API_KEY", "OPENROUTER_API_URL", "LLM_GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.providers["openrouter"].api_url == "https://openrouter.ai/api/v1"
    assert settings.providers["vercel"].api_url == "https://ai-gateway.vercel.sh/v1"
    assert settings.providers["corethink"].api_url == "https://api.corethink.ai/v1/code"
    assert settings.providers["openrouter"].has_generation_endpoint
    assert not settings.providers["mistral"].has_generation_endpoint
    assert settings.listen_port == 8080
    assert settings.trusted_proxy_hops == 0
    assert settings.max_request_body_bytes == 8 * 1024 * 1024


def test_fixed_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("NEXTAUTH_SECRET", "s3cret")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or")
    monkeypatch.setenv("VERCEL_AI_GATEWAY_API_KEY", "vk")
    monkeypatch.setenv("GIGAPOTATO_API_URL", "https://giga.example/v1/")
    settings = load_settings()
    assert settings.database_url is not None and settings.database_url.get_secret_value() == "postgresql://u@db/x"
    assert settings.redis_url is not None and settings.redis_url.get_secret_value() == "redis://cache:6379/0"
    assert settings.nextauth_secret is not None and settings.nextauth_secret.get_secret_value() == "s3cret"
    assert settings.providers["openrouter"].api_key.get_secret_value() == "sk-or"  # type: ignore[union-attr]
    assert settings.providers["vercel"].api_key.get_secret_value() == "vk"  # type: ignore[union-attr]
    assert settings.providers["gigapotato"].api_url == "https://giga.example/v1"
    # Secrets never print.
    assert "sk-or" not in repr(settings) and "s3cret" not in repr(settings)


def test_yaml_file_is_overridden_by_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen_port: 9000\ntrusted_proxy_hops: 1\n"
        "providers:\n  openrouter:\n    api_key: from-yaml\n  corethink:\n    api_url: http://127.0.0.1:7000/v1\n"
    )
    monkeypatch.setenv("LLM_GATEWAY_CONFIG", str(config))
    monkeypatch.setenv("LLM_GATEWAY_LISTEN_PORT", "9100")
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("CORETHINK_API_URL", raising=False)
    settings = load_settings()
    assert settings.listen_port == 9100
    assert settings.trusted_proxy_hops == 1
    assert settings.providers["openrouter"].api_key.get_secret_value() == "from-yaml"  # type: ignore[union-attr]
    # Deep merge: the rest of the provider table keeps its defaults.
    assert settings.providers["openrouter"].api_url == "https://openrouter.ai/api/v1"
    assert settings.providers["corethink"].api_url == "http://127.0.0.1:7000/v1"
    assert not settings.providers["corethink"].tls


def test_bad_values_are_refused_with_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENROUTER_API_URL", "ftp://nope")
    with pytest.raises(ValidationError, match="provider URL must be http"):
        load_settings()
    monkeypatch.delenv("OPENROUTER_API_URL")
    monkeypatch.setenv("LLM_GATEWAY_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_settings()


def test_secrets_directory_files_under_the_fixed_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "OPENROUTER_API_KEY").write_text("sk-or-from-file\n")
    (tmp_path / "NEXTAUTH_SECRET").write_text("jwt-secret-from-file")
    (tmp_path / "VERCEL_AI_GATEWAY_API_KEY").write_text("vk-file")
    monkeypatch.setenv("LLM_GATEWAY_SECRETS_DIR", str(tmp_path))
    for name in ("OPENROUTER_API_KEY", "NEXTAUTH_SECRET", "VERCEL_AI_GATEWAY_API_KEY", "LLM_GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VERCEL_AI_GATEWAY_API_KEY", "vk-env")  # the environment wins over a file
    settings = load_settings()
    assert settings.providers["openrouter"].api_key.get_secret_value() == "sk-or-from-file"  # type: ignore[union-attr]
    assert settings.nextauth_secret is not None and settings.nextauth_secret.get_secret_value() == "jwt-secret-from-file"
    assert settings.providers["vercel"].api_key.get_secret_value() == "vk-env"  # type: ignore[union-attr]
    assert settings.providers["openrouter"].api_url == "https://openrouter.ai/api/v1"
