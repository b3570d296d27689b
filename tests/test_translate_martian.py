"""The Martian free model (contract 3.2 step 4, 3.4): once enabled by configuration it is
routed as a synthetic custom LLM of kind `openai` (Responses API) at Martian's URL and key."""

from __future__ import annotations

from extproc.custom_llm import CustomLlms
from extproc.pipeline.identity import Identity
from extproc.pipeline.parse import ChatRequest
from extproc.pipeline.routing import Router
from extproc.settings import Settings
from tests.contract_models import free_models

MARTIAN_MODEL = "x-ai/grok-code-fast-1:optimized:free"


async def test_enabled_martian_free_model_is_a_synthetic_openai_custom_llm() -> None:
    models = free_models({MARTIAN_MODEL: True})
    settings = Settings(
        free_models=models,
        providers={"martian": {"api_url": "http://127.0.0.1:9/martian/v1", "api_key": "martian-key"}},
        custom_llm_allowed_networks=("127.0.0.0/8",),
    )
    # BYOK is off without its key, and the A/B never takes a free model served by its own gateway.
    router = Router(settings, byok=None, byok_key=None, custom_llms=CustomLlms(None, settings), error_rates=None, cooldowns=None)  # type: ignore[arg-type]
    chat = ChatRequest(body={"model": MARTIAN_MODEL, "messages": []}, model=MARTIAN_MODEL, model_lower=MARTIAN_MODEL,
                       stream=True)
    identity = Identity(user_id="anon:1.2.3.4", user=None, organization_id=None, bot_id=None, token_source=None)

    route = await router.select(chat, identity, None)

    assert route.provider.id == "custom"
    llm = route.custom_llm
    assert llm is not None
    assert (llm.kind, llm.public_id, llm.internal_id) == ("openai", MARTIAN_MODEL, "x-ai/grok-code-fast-1:optimized")
    assert (llm.base_url, llm.api_key, llm.force_reasoning) == ("http://127.0.0.1:9/martian/v1", "martian-key", True)
    assert route.custom_host == "127.0.0.1:9"  # Host (the default port would be left out)
    assert route.custom_address == "127.0.0.1:9"  # the checked address Envoy connects to
    translated = llm.provider_request({"messages": [], "reasoning": {"effort": "medium"}}, legacy_extension=False)
    assert translated.path == "/responses"
    assert translated.headers == {"authorization": "Bearer martian-key"}
    assert translated.body["reasoning"] == {"effort": "medium", "summary": "auto"}
