"""One processor per ext_proc phase, in the order Envoy sends them."""
