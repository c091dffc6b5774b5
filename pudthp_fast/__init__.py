"""pudthp_fast: the vectorised numpy twin of the reference model (struct-of-arrays state).

It imports only ``pudthp_ref.spec`` (the shared vocabulary) from the reference; a test
checks the import graph.
"""

__all__ = ["FastModel"]


def __getattr__(name: str) -> object:
    if name == "FastModel":
        from pudthp_fast.model import FastModel

        return FastModel
    raise AttributeError(name)
