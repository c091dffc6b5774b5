"""harness: programs and their validation, the runner, lockstep, the oracle, shrinking, the
corpus, the benchmark, live-kernel conformance (``harness.conform``) and the command line."""
