"""Custom-LLM translation (contract 3.4): one module per schema pair, each a pure request
function and an incremental response translator (provider bytes in, chat-completions bytes out).

`chat` holds what both pairs emit on the chat-completions side; `chat_to_anthropic` speaks the
Anthropic Messages API, `chat_to_responses` the OpenAI Responses API; `openai_phase` remembers the Responses API's
message phases for OpenAI's own endpoint.
"""
