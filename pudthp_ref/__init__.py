"""pudthp_ref: the pure-Python reference model of anonymous THP management (PTE, PMD, PUD)."""

__all__ = ["RefModel"]


def __getattr__(name: str) -> object:
    # Lazy, so that ``import pudthp_ref.spec`` (all the fast side may import) stays light.
    if name == "RefModel":
        from pudthp_ref.model import RefModel

        return RefModel
    raise AttributeError(name)
