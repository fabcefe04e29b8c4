"""What made a scan (``ScanSettings``): saved with it and compared on ``--resume``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ScanSettings:
    """What made a scan: the model's shape, the site read, the metric, the data and the null.

    Saved with the scan (``Scan.save``, as JSON in the safetensors header) and compared on
    ``--resume``; reads as attributes (``settings.n_slots``). ``n_slots`` is the number of
    slots read per example (1 for the last-instruction-token baseline).
    """

    n_layers: int
    n_units: int  # units per layer at the site (d_mlp for MLP neurons)
    layers: tuple[int, ...]
    n_slots: int
    metric: str
    n_examples: int
    positions: str  # soft_prompt | last_instruction_token | precomputed
    statistic: str = "pearson"
    n_permutations: int = 0
    permutation_seed: int = 0
    permutation_groups: str | None = None
    model_name: str | None = None
    prompt: dict[str, Any] | None = None  # the prompt's seed, init and training settings
    batch_size: int | None = None
    data_hash: str | None = None
    backend: str | None = None
    sklens_version: str | None = None
    n_extremal: int = 0  # extremal examples kept per (layer, unit, slot): Scan.extremes
    mi_bins: int = 0  # activation bins of the mutual information (0: none): Scan.mutual_info
    site: str = "mlp"  # what a unit is (sklens.sites): mlp, heads, resid, sae:<hash>, a hook, ...

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ScanSettings:
        """Read saved settings; an unknown or missing field is a ValueError naming it."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(saved.keys() - names)
        if unknown:
            raise ValueError(f"settings this sklens does not know: {unknown}")
        try:
            return cls(**{**saved, "layers": tuple(int(L) for L in saved["layers"])})
        except (KeyError, TypeError) as err:
            raise ValueError(f"incomplete settings ({err})") from err
