"""Composition of operators, applied left to right (DESIGN.md §3: spatial ∘ temporal).

For ops = [A₁, …, A_m] (A₁ applied first):

    A   = A_m ∘ … ∘ A₁
    Aᵀ  = A₁ᵀ ∘ … ∘ A_mᵀ
    AᵀA = Pᵀ (A_mᵀA_m) P,   P = A_{m−1} ∘ … ∘ A₁   (the last op's closed-form normal operator)
"""

from __future__ import annotations

from typing import Sequence

import torch

from engine.errors import InputError
from engine.operators.base import LinearOperator

Tensor = torch.Tensor


class Composition(LinearOperator):
    """A = ops[-1] ∘ … ∘ ops[0].  [*ops[0].in_shape] → [*ops[-1].out_shape]"""

    def __init__(self, ops: Sequence[LinearOperator]):
        self.ops = tuple(ops)
        if not self.ops:
            raise InputError("a composition needs at least one operator")
        for first, then in zip(self.ops, self.ops[1:]):
            if tuple(first.out_shape) != tuple(then.in_shape):
                raise InputError(
                    f"cannot compose: {type(first).__name__} gives shape {tuple(first.out_shape)} "
                    f"but {type(then).__name__} expects {tuple(then.in_shape)}")
        self.in_shape = tuple(self.ops[0].in_shape)
        self.out_shape = tuple(self.ops[-1].out_shape)

    def A(self, x: Tensor) -> Tensor:
        """y = A_m(…A₁(x)).  [*in_shape] → [*out_shape]"""
        for op in self.ops:
            x = op.A(x)
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:
        """x = A₁ᵀ(…A_mᵀ(y)).  [*out_shape] → [*in_shape]"""
        for op in reversed(self.ops):
            y = op.A_adjoint(y)
        return y

    def A_adjoint_A(self, x: Tensor) -> Tensor:
        """AᵀA x = Pᵀ(A_mᵀA_m(P x)).  [*in_shape] → [*in_shape]"""
        *prefix, last = self.ops
        for op in prefix:
            x = op.A(x)
        x = last.A_adjoint_A(x)
        for op in reversed(prefix):
            x = op.A_adjoint(x)
        return x
