"""What the local stack runs besides the gateway itself: mock upstreams and their helpers."""
