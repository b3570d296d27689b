"""Step 2.9 (and the feature attribution of 2.1): what the client's headers say about it.

Header names arrive lowercased (HTTP/2 and Envoy's header map), so every lookup is lowercase.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

HEADER_LIMIT = 500
PROJECT_ID_LIMIT = 256
FEATURE_HEADER = "x-kilocode-feature"
DIRECT_GATEWAY = "direct-gateway"
FEATURES = frozenset(
    {
        "vscode-extension",
        "jetbrains-extension",
        "autocomplete",
        "parallel-agent",
        "managed-indexing",
        "cli",
        "cloud-agent",
        "code-review",
        "auto-triage",
        "autofix",
        "app-builder",
        "agent-manager",
        "security-agent",
        "slack",
        "discord",
        "webhook",
        "kiloclaw",
        "openclaw",
        DIRECT_GATEWAY,
    }
)
LEGACY_USER_AGENT_PREFIX = "Kilo-Code/"
OPENCODE_USER_AGENT_PREFIX = "opencode-kilo-provider"

# The reference's patterns (case-insensitive). Matched with fullmatch: Python's `$` would also
# accept a trailing newline, which the reference's does not.
_HTTPS_REPO = re.compile(r"https?://[^/]+/([^\s?#]+?)(?:\.git)?", re.IGNORECASE)
_SSH_REPO = re.compile(r"git@[^:]+:(\S+?)(?:\.git)?", re.IGNORECASE)
# `-prerelease` stands for any pre-release tag (`-beta`, `-rc.1`), as in the reference.
_VERSION = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?(?:-[a-zA-Z0-9.]+)?(?:\s|$)")


@dataclass(frozen=True, slots=True)
class ClientInfo:
    task_id: str | None
    editor_name: str | None
    machine_id: str | None
    mode: str | None
    project_id: str | None
    version: float
    feature: str | None
    user_agent: str | None  # raw, for accounting
    forwarded_for: str | None  # raw, for accounting
    is_legacy_extension: bool  # the Roo-Code based extension
    is_opencode: bool


def extract_client_info(headers: Mapping[str, str], path: str) -> ClientInfo:
    user_agent = headers.get("user-agent")
    return ClientInfo(
        task_id=limited_header(headers, "x-kilocode-taskid"),
        editor_name=limited_header(headers, "x-kilocode-editorname"),
        machine_id=limited_header(headers, "x-kilocode-machineid"),
        mode=limited_header(headers, "x-kilocode-mode"),
        project_id=normalize_project_id(headers.get("x-kilocode-projectid")),
        version=parse_version(headers.get("x-kilocode-version")),
        feature=feature_from(headers, path),
        user_agent=user_agent,
        forwarded_for=headers.get("x-forwarded-for"),
        is_legacy_extension=user_agent is not None and user_agent.startswith(LEGACY_USER_AGENT_PREFIX),
        is_opencode=user_agent is not None and user_agent.startswith(OPENCODE_USER_AGENT_PREFIX),
    )


def limited_header(headers: Mapping[str, str], name: str, limit: int = HEADER_LIMIT) -> str | None:
    """Sliced before trimming, as the reference does; blank is absent."""
    value = headers.get(name)
    if value is None:
        return None
    return value[:limit].strip() or None


def normalize_project_id(value: str | None) -> str | None:
    """A git remote URL becomes the repository name, so every clone of a repo is one project."""
    if not value:
        return None
    truncated = value[:PROJECT_ID_LIMIT]
    match = _HTTPS_REPO.fullmatch(truncated) or _SSH_REPO.fullmatch(truncated)
    if match is None:
        return truncated
    return match.group(1).rsplit("/", 1)[-1]


def parse_version(value: str | None) -> float:
    """`X-KiloCode-Version` as major + minor/1000 + patch/1e6; anything unparseable is 0."""
    if not value:
        return 0.0
    match = _VERSION.match(value)
    if match is None:
        return 0.0
    # float() of the digit strings, like the reference's Number(): no int-to-float overflow.
    major, minor, patch = (float(part) if part else 0.0 for part in match.groups())
    return major + minor / 1000 + patch / 1_000_000


def feature_from(headers: Mapping[str, str], path: str) -> str | None:
    """Decision 1: without the header, only the new path is attributed to the direct gateway.

    An empty header counts as absent (the reference's `||`); any other value outside the list
    is unattributed rather than defaulted.
    """
    value = headers.get(FEATURE_HEADER)
    if not value:
        pathname = path.split("?", 1)[0]
        return None if "/openrouter" in pathname else DIRECT_GATEWAY
    feature = value.strip().lower()
    return feature if feature in FEATURES else None
