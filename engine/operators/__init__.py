"""The degradations A of docs/design.md ("Operators"), each with its exact adjoint Aᵀ and normal operator AᵀA.

One file per operator, forward and adjoint side by side over small pure functions:
`temporal` (TemporalPSF), `blur` (SpatialBlur), `sr` (SuperResolution),
`inpaint` (Inpainting), `compose` (Composition). `from_spec` builds any of them,
or a composition, from a spec such as `temporal:uniform:7+sr:4`; REGISTRY lists them.
`kronecker` (KroneckerOperator) is the same degradation as T ⊗ S with an explicit frame matrix T,
for windows and for frames split over processes; `measurement` draws a measurement's noise.
"""

from engine.operators.base import LinearOperator
from engine.operators.blur import SpatialBlur
from engine.operators.compose import Composition
from engine.operators.inpaint import Inpainting
from engine.operators.kronecker import KroneckerOperator
from engine.operators.registry import KERNELS, REGISTRY, Entry, accepted_specs, from_spec
from engine.operators.sr import SuperResolution
from engine.operators.temporal import TemporalPSF

__all__ = [
    "KERNELS", "REGISTRY", "Composition", "Entry", "Inpainting", "KroneckerOperator", "LinearOperator", "SpatialBlur",
    "SuperResolution", "TemporalPSF", "accepted_specs", "from_spec",
]
