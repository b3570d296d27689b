"""Client-visible error bodies that several test modules assert, verbatim from the contract
(behaviour.md Appendix A): spelt out here, never taken from extproc/errors.py, so that a change
of wording in the gateway fails the tests."""

FREE_LIMIT = {
    "error": "Rate limit exceeded",
    "message": "Free model usage limit reached. Please try again later or upgrade to a paid model.",
}
SERVICE_UNAVAILABLE = {
    "error": "Service Unavailable",
    "message": "The service is temporarily unavailable. Please try again later.",
}
# Appendix A #20: an unhandled exception, and Envoy's answer when the ext_proc stream fails.
INTERNAL_ERROR = {"error": "Internal server error"}
