"""Admission in Redis: the spend holds of paid requests (issue 23), one atomic script per request."""
