"""harness: program loading, the oracle, runners and the pudthp command line."""
