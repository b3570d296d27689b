"""The gateway's defaults against the contract's own tables, written out in tests/bodies.py and
tests/contract_models.py from behaviour.md.

Unit tests build their catalogue from those tables and compare errors with their bodies; these
tests pin the gateway's own sources (`extproc.catalogue.DEFAULT_*`, `extproc.errors`) to the same
text, so a changed default or a reworded body fails here instead of moving every expectation.
"""

from __future__ import annotations

import orjson

from extproc import errors
from extproc.catalogue import DEFAULT_FREE_MODELS, DEFAULT_RATE_LIMITED_TO_DEATH
from tests.bodies import APPENDIX_A, GATEWAY_REPLIES
from tests.contract_models import FREE_MODELS, RATE_LIMITED_TO_DEATH


def test_default_free_models_are_the_contracts_table() -> None:
    defaults = {
        m["public_id"]: (
            m["internal_id"], m["context_length"], m["max_completion_tokens"], m["is_enabled"],
            frozenset(m.get("flags", ())), m["gateway"], tuple(m.get("inference_providers", ())),  # type: ignore[call-overload]
        )
        for m in DEFAULT_FREE_MODELS
    }
    assert defaults == FREE_MODELS


def test_default_rate_limited_to_death_models_are_the_contracts_set() -> None:
    assert len(RATE_LIMITED_TO_DEATH) == 24
    assert sorted(DEFAULT_RATE_LIMITED_TO_DEATH) == sorted(RATE_LIMITED_TO_DEATH)


def test_error_catalogue_is_appendix_a_verbatim_and_the_gateways_own_replies() -> None:
    for name, reply in {**APPENDIX_A, **GATEWAY_REPLIES}.items():
        error = getattr(errors, name)
        assert (error.status, error.body) == (reply.status, reply.body), name
        assert orjson.loads(error.json()) == reply.body, name
