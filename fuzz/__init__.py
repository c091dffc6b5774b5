"""fuzz: what generates programs and drives campaigns: the Hypothesis machine and engine, the
atheris target, engine, mutator and byte codec, the random generators, the findings archive."""
