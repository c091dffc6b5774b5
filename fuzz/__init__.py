"""fuzz: coverage-guided campaign targets."""
