"""Bit-scan instructions for numba kernels (LLVM's cttz/ctlz/ctpop), which numba does not expose directly."""

from __future__ import annotations

from llvmlite import ir
from numba.extending import intrinsic

__all__ = ["cttz", "ctlz", "popcount"]


@intrinsic
def cttz(typingctx, x):
    """Count of trailing zero bits of a nonzero integer."""

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return x(x), codegen


@intrinsic
def ctlz(typingctx, x):
    """Count of leading zero bits (the width of the type for zero)."""

    def codegen(context, builder, signature, args):
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

    return x(x), codegen


@intrinsic
def popcount(typingctx, x):
    """Count of one bits."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen
