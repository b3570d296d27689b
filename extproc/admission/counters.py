"""The spend holds' metrics (issue 23), counted where each event happens: holds taken and
refusals in the ext_proc, holds ended in the ledger writer (and the ext_proc, for requests that
get no row). What is outstanding is what was held minus what was released (a PromQL
difference over the fleet: deploy/grafana/llm-gateway.json)."""

from __future__ import annotations

from prometheus_client import Counter

from extproc.admission.scopes import Kind

HOLDS = Counter("llm_gateway_spend_holds", "Spend holds taken at admission.")
HELD = Counter("llm_gateway_spend_held_microdollars", "Microdollars reserved by spend holds at admission.")
RELEASED_HOLDS = Counter("llm_gateway_spend_holds_released", "Spend holds ended (row committed, or no row).")
RELEASED = Counter("llm_gateway_spend_released_microdollars", "Microdollars of spend holds ended.")
# Of the holds ended by a committed row: what they held against what the row charged (how tight
# the bound is: their ratio).
SETTLED_HELD = Counter(
    "llm_gateway_spend_settled_held_microdollars", "Microdollars held by requests whose ledger row committed."
)
SETTLED_CHARGED = Counter(
    "llm_gateway_spend_settled_charged_microdollars", "Microdollars charged to requests that held, at their commit."
)
REASONS = (*(kind.value for kind in Kind), "redis_unavailable")
# `reason`: the scope that bound the request (`Kind`), or `redis_unavailable` (the 503 of
# SPEND_HOLDS_REDIS_DOWN=refuse).
REFUSALS = Counter("llm_gateway_spend_hold_refusals", "Paid requests refused by their spend hold.", ["reason"])
LOWERED = Counter(
    "llm_gateway_spend_hold_lowered", "Paid requests whose max_tokens was lowered to what was available.", ["reason"]
)
# Admissions that could not reach Redis and fell back to the contract's check (or refused).
DEGRADED = Counter("llm_gateway_spend_hold_degraded", "Paid requests admitted without a spend hold: Redis unavailable.")
SETTLE_FAILURES = Counter("llm_gateway_spend_settle_failures", "Hold ends Redis refused (retried with the record).")
for _reason in REASONS:  # every series from the start: rates and alerts read 0
    REFUSALS.labels(_reason)
    LOWERED.labels(_reason)
