"""Ray Tune studies of Adv-DPNP and their export to Parquet."""

from .tune import export

__all__ = ["export"]
