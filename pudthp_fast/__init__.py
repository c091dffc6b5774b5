"""pudthp_fast: the vectorised numpy twin of the reference model (not yet implemented)."""
