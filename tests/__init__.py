"""harness's tests (a regular package: some installed distributions ship a top-level `tests` package of their own)."""
