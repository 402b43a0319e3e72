"""A degradation spec as text, parsed in one place: terms joined by `+` in the order applied.

    temporal:uniform:7:replicate+sr:4     →  [Term("temporal", "uniform:7:replicate"), Term("sr", "4")]

Each term is `NAME:ARGS`; what ARGS mean is the registry's business (engine.operators.registry
builds the operators). This module only splits and rewrites the text: the temporal terms apart
from the frame-local ones (A = T ⊗ S), the boundary in time a whole video or a window gives a
temporal term that names none, and the spatial scale of the super-resolution terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.errors import InputError

#: the temporal boundaries a term may name as its last field
TIME_BOUNDARIES = ("circular", "zero", "replicate")
TEMPORAL = "temporal"

__all__ = ["Term", "parse", "join", "split_temporal", "time_boundary", "with_time_boundary", "sr_scale",
           "TIME_BOUNDARIES"]


@dataclass(frozen=True)
class Term:
    """One term of a spec: its name and the text after `NAME:`."""

    name: str
    args: str = ""

    @property
    def fields(self) -> list[str]:
        """ARGS split at ':' (none for a term without ARGS)."""
        return self.args.split(":") if self.args else []

    @property
    def temporal(self) -> bool:
        return self.name == TEMPORAL

    def __str__(self) -> str:
        return f"{self.name}:{self.args}" if self.args else self.name


def parse(spec: str) -> list[Term]:
    """The terms of `spec`, in the order applied; an empty spec or term is refused in one line."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty degradation spec")
    terms = []
    for text in spec.split("+"):
        name, _, args = text.strip().partition(":")
        if not name:
            raise InputError(f"empty term in spec {spec!r}")
        terms.append(Term(name, args))
    return terms


def join(terms) -> str:
    """The spec of `terms` (Term or text), joined by '+'."""
    return "+".join(str(term) for term in terms)


def split_temporal(spec: str) -> tuple[list[Term], list[Term]]:
    """(temporal terms, frame-local terms) of `spec`, each in the order applied."""
    terms = parse(spec)
    return [t for t in terms if t.temporal], [t for t in terms if not t.temporal]


def time_boundary(term: Term) -> Optional[str]:
    """The boundary a temporal term names (`temporal:FAMILY:VALUE:BOUNDARY`), or None."""
    fields = term.fields
    return fields[-1] if term.temporal and len(fields) == 3 and fields[-1] in TIME_BOUNDARIES else None


def with_time_boundary(spec: str, boundary: str) -> str:
    """`spec` with `boundary` appended to each temporal term that names none; the rest as typed."""
    out = []
    for text in spec.split("+"):
        term = Term(*text.strip().partition(":")[::2])
        out.append(f"{text.strip()}:{boundary}" if term.temporal and len(term.fields) == 2 else text.strip())
    return "+".join(out)


def sr_scale(spec: str) -> int:
    """The product S of the super-resolution factors of `spec` (1 without `sr` terms)."""
    scale = 1
    for term in parse(spec):
        if term.name == "sr":
            try:
                scale *= int(term.fields[0])
            except (IndexError, ValueError):
                raise InputError(f"bad spec term {str(term)!r}: the factor S must be an integer (usage: sr:S)") from None
    return scale
