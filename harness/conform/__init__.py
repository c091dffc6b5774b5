"""harness.conform: live-kernel conformance (``pudthp conform``): the executor, observation,
kernel helpers and the comparison with the reference model."""
