"""The ``pudthp`` command line: the top floor, which may import every package below it."""
