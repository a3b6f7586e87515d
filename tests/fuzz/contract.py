"""The contract of a decoder of untrusted bytes, checked around one call (:func:`check_contract`):

* only the project's errors escape (any other exception fails the test with its traceback);
* the work is bounded by the input's size: bytes and reads of physical memory (through :class:`CountingMemory`)
  and Python steps (a trace hook counts every function call and generator resumption, and every line run in the
  ``workbench`` package, loops in comprehensions included) stay under a :class:`Budget`, and the call is stopped
  as soon as one is exceeded, so a hang fails at once instead of hanging the suite;
* the memory is bounded: the peak of what is allocated during the call (``tracemalloc``, which also sees numpy's
  arrays) stays under the budget too, and the address space is capped meanwhile (``RLIMIT_AS``) so that a runaway
  allocation is a ``MemoryError`` (a failure) rather than the machine running out of memory.

No wall-clock time is measured anywhere.

The hypothesis profiles are registered here: ``fuzz-suite`` (the default: a bounded run inside the fast suite) and
``fuzz`` (``make fuzz``: 20000 examples per test); :func:`fuzz_settings` gives the one ``HYPOTHESIS_PROFILE`` names.
"""

from __future__ import annotations

import os
import resource
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings

import workbench
from workbench.abi.physmem import PhysicalMemory

__all__ = [
    "Budget",
    "BudgetExceeded",
    "CountingMemory",
    "Outcome",
    "check_contract",
    "fuzz_settings",
]

T = TypeVar("T")

_SLOW_INPUTS_ARE_THE_POINT = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(  # all the fuzz tests together: about 40 s of one core
    "fuzz-suite",
    max_examples=80,
    deadline=None,
    suppress_health_check=_SLOW_INPUTS_ARE_THE_POINT,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no slow "explain"
)
settings.register_profile(  # make fuzz: hours
    "fuzz",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=_SLOW_INPUTS_ARE_THE_POINT,
)


def fuzz_settings() -> settings:
    """The settings of the fuzz profile in force: ``HYPOTHESIS_PROFILE`` when it names ``fuzz`` or ``fuzz-suite``
    (else ``fuzz-suite``); ``FUZZ_MAX_EXAMPLES`` overrides its number of examples (for a time-boxed long run)."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-suite")
    profile = settings.get_profile(name if name in ("fuzz", "fuzz-suite") else "fuzz-suite")
    examples = os.environ.get("FUZZ_MAX_EXAMPLES")
    return settings(profile, max_examples=int(examples)) if examples else settings(profile)


class BudgetExceeded(BaseException):
    """A decoder did more work or took more memory than its budget allows. A ``BaseException``, so that no
    decoder's ``except Exception`` can swallow it."""


@dataclass(frozen=True)
class Budget:
    """Limits on one call, each ``fixed + per_byte × input size``.

    :param read_factor: bytes of physical memory read per input byte
    :param reads_per_page: ``read``/``view`` calls per 4 KiB of input
    :param steps_per_byte: Python steps (calls, and lines run in ``workbench``) per input byte
    :param memory_factor: bytes allocated at the peak per input byte
    """

    read_factor: float = 4.0
    reads_per_page: float = 64.0
    steps_per_byte: float = 4.0
    memory_factor: float = 16.0
    fixed_reads: int = 64
    fixed_steps: int = 200_000
    fixed_memory: int = 4 << 20

    def limits(self, input_size: int) -> tuple[int, int, int, int]:
        """(bytes read, reads, steps, peak bytes) allowed for an input of ``input_size`` bytes."""
        return (
            int(self.read_factor * input_size) + 4096 * self.fixed_reads,
            int(self.reads_per_page * input_size / 4096) + self.fixed_reads,
            int(self.steps_per_byte * input_size) + self.fixed_steps,
            int(self.memory_factor * input_size) + self.fixed_memory,
        )


class CountingMemory(PhysicalMemory):
    """``inner`` with every ``read`` and ``view`` counted; :class:`BudgetExceeded` as soon as more than
    ``max_bytes`` bytes or ``max_reads`` reads are asked for."""

    def __init__(self, inner: PhysicalMemory, max_bytes: int | None = None, max_reads: int | None = None):
        super().__init__(inner.ranges)
        self.inner = inner
        self.max_bytes = max_bytes
        self.max_reads = max_reads
        self.bytes_read = 0
        self.reads = 0

    def _count(self, phys: int, size: int) -> None:
        self.reads += 1
        self.bytes_read += max(size, 0)
        if self.max_reads is not None and self.reads > self.max_reads:
            raise BudgetExceeded(f"{self.reads} physical reads (at {phys:#x}) exceed the budget of {self.max_reads}")
        if self.max_bytes is not None and self.bytes_read > self.max_bytes:
            raise BudgetExceeded(
                f"{self.bytes_read} bytes read (the last {size} at {phys:#x}) exceed the budget of {self.max_bytes}"
            )

    def read(self, phys: int, size: int) -> bytes:
        self._count(phys, size)
        return self.inner.read(phys, size)

    def view(self, phys: int, size: int) -> memoryview:
        self._count(phys, size)
        return self.inner.view(phys, size)

    def _read_in_range(self, r, offset, size):  # every read goes through read() or view() above
        raise AssertionError("unreachable")


@dataclass
class Outcome:
    """What one checked call did: its result or the project error it raised, and the work it took."""

    result: Any
    error: BaseException | None
    steps: int
    peak_bytes: int
    bytes_read: int
    reads: int


def check_contract(
    call: Callable[[], T],
    *,
    input_size: int,
    errors: type[BaseException] | tuple[type[BaseException], ...],
    memory: CountingMemory | None = None,
    budget: Budget = Budget(),
) -> Outcome:
    """Runs ``call()`` under the contract: returns its :class:`Outcome` when it returned or raised one of
    ``errors``; any other exception propagates (the test fails with it), as does :class:`BudgetExceeded`.

    :param call: the decoder call, with its input bound in
    :param input_size: the input's size in bytes (the physical memory's, or the file's)
    :param errors: the project errors the decoder may raise
    :param memory: the :class:`CountingMemory` the call reads through, if any; its limits are set here
    :param budget: the limits, per input byte
    """
    max_bytes, max_reads, max_steps, max_peak = budget.limits(input_size)
    if memory is not None:
        memory.max_bytes, memory.max_reads = max_bytes, max_reads
        memory.bytes_read = memory.reads = 0
    steps = 0

    def count_step(frame, event, arg):
        nonlocal steps
        steps += 1
        if steps > max_steps:
            raise BudgetExceeded(
                f"more than {max_steps} Python steps for an input of {input_size} bytes "
                f"(now in {frame.f_code.co_qualname}, {frame.f_code.co_filename}:{frame.f_lineno})"
            )
        return count_step if frame.f_code.co_filename.startswith(_WORKBENCH) else None

    previous_trace = sys.gettrace()
    address_space = soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space_in_use() + max_peak + _HEADROOM
    cap = min([cap, *(limit for limit in (soft, hard) if limit != resource.RLIM_INFINITY)])
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    result, error = None, None
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    sys.settrace(count_step)
    try:
        result = call()
    except errors as exc:
        error = exc
    finally:
        sys.settrace(previous_trace)
        resource.setrlimit(resource.RLIMIT_AS, address_space)
        peak = tracemalloc.get_traced_memory()[1] - baseline
        if not was_tracing:
            tracemalloc.stop()
    if peak > max_peak:
        raise BudgetExceeded(f"peak allocation of {peak} bytes exceeds {max_peak} for an input of {input_size} bytes")
    return Outcome(
        result,
        error,
        steps,
        peak,
        memory.bytes_read if memory is not None else 0,
        memory.reads if memory is not None else 0,
    )


_WORKBENCH = os.path.dirname(workbench.__file__)
_HEADROOM = 512 << 20  # for what the interpreter maps by itself meanwhile (arenas, thread stacks)


def _address_space_in_use() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()
