"""Response-side rewrites: the free-model rewrite (contract 6.4) and readable upstream errors (6.2, 6.3)."""
