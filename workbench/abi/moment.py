"""Which moment of a live update a handover's bytes show, and the evidence for it.

A live update goes through seven moments, named the same by the decoder (bytes alone) and by the inspector (the
kernel's own objects, :mod:`workbench.inspect.moment`):

* ``before_preserve``: nothing preserved yet; the handover holds only its own metadata pages;
* ``preserved``: files preserved (PRESERVE_FD puts their folios and metadata into the radix tree at once) but LUO
  has not serialized its sessions: it does that only in ``liveupdate_reboot()``, on the kexec reboot path, so
  ``luo_ser.sessions_pa`` is still 0 and the bytes list no session;
* ``serialized``: ``liveupdate_reboot()`` has run: ``sessions_pa`` points at the session list;
* ``next_kernel_pending``: in the next kernel, the handover bytes are there and LUO has not deserialized them (no
  process has opened ``/dev/liveupdate`` yet);
* ``deserialized``: LUO has turned them into incoming sessions, not all of them retrieved yet;
* ``retrieved``: every incoming session retrieved, some not finished;
* ``finished``: every incoming session finished.

Bytes alone cannot tell the four moments of the next kernel apart: LUO frees the incoming blocks without clearing
them. A reading from bytes in the next kernel is therefore not ``certain`` and lists the moments it allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.abi.handover import Handover

__all__ = [
    "MOMENTS",
    "NEXT_KERNEL_MOMENTS",
    "NO_SESSIONS_BEFORE_REBOOT",
    "MomentReading",
    "handover_moment",
]

MOMENTS = (
    "before_preserve",
    "preserved",
    "serialized",
    "next_kernel_pending",
    "deserialized",
    "retrieved",
    "finished",
)
NEXT_KERNEL_MOMENTS = MOMENTS[3:]

#: why the bytes of a handover before the kexec list no session
NO_SESSIONS_BEFORE_REBOOT = (
    "LUO serializes its sessions only at reboot (liveupdate_reboot() in kernel_kexec()); before that "
    "luo_ser.sessions_pa is 0 and the handover bytes list no session, even when sessions hold preserved files: "
    "this is the moment before serialization"
)


@dataclass(frozen=True)
class MomentReading:
    """A moment (one of :data:`MOMENTS`), the facts it was derived from (``evidence``, in words), whether those
    facts decide it (``certain``) and, when they do not, the moments they allow (``possible``)."""

    moment: str
    evidence: list[str]
    certain: bool = True
    possible: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.moment not in MOMENTS:
            raise ValueError(f"moment {self.moment!r} is not one of {', '.join(MOMENTS)}")

    def as_dict(self) -> dict[str, Any]:
        """The JSON fields every summary carries: ``moment``, ``moment_evidence``, ``moment_certain`` and
        ``moment_possible``."""
        return {
            "moment": self.moment,
            "moment_evidence": list(self.evidence),
            "moment_certain": self.certain,
            "moment_possible": list(self.possible) if self.possible else [self.moment],
        }


def handover_moment(handover: Handover) -> MomentReading:
    """The moment the bytes of ``handover`` show.

    An incoming handover (``handover.role == "incoming"``: the kexec metadata of another FDT in the same memory
    counts one kexec more) is read in the next kernel: the moment is at least ``next_kernel_pending`` and bytes
    cannot say more. Otherwise the handover is the running kernel's outgoing one: ``serialized`` when
    ``luo_ser.sessions_pa`` is set; else ``preserved`` when the radix tree holds folios beyond the handover's own
    metadata pages, ``before_preserve`` when it holds only those.

    :param handover: a decoded handover (:func:`~workbench.abi.handover.decode_handover`)
    """
    if handover.role == "incoming":
        evidence = [
            f"this KHO FDT is the incoming handover: {handover.role_reason}",
            "bytes cannot tell whether LUO has deserialized it (LUO frees the incoming blocks without clearing "
            "them); inspect the kernel with drgn (workbench inspect) to know",
        ]
        if handover.luo is not None:
            evidence.append(
                f"its luo_ser lists {len(handover.luo.sessions)} session(s) with "
                f"{sum(len(s.files) for s in handover.luo.sessions)} file(s)"
            )
        return MomentReading("next_kernel_pending", evidence, certain=False, possible=list(NEXT_KERNEL_MOMENTS))
    luo = handover.luo
    if luo is None:
        return MomentReading(
            "before_preserve",
            ["the handover has no decodable LUO sub-node: no session can have been handed over"],
            certain=False,
            possible=["before_preserve", "preserved", "serialized"],
        )
    if luo.sessions_pa:
        files = sum(len(s.files) for s in luo.sessions)
        return MomentReading(
            "serialized",
            [
                f"luo_ser.sessions_pa is {luo.sessions_pa:#x}: liveupdate_reboot() serialized {len(luo.sessions)} "
                f"session(s) with {files} file(s)"
            ],
        )
    no_sessions = f"luo_ser.sessions_pa is 0: {NO_SESSIONS_BEFORE_REBOOT}"
    if handover.memory_map is None:
        return MomentReading(
            "before_preserve",
            [no_sessions, "the preserved-memory map was not decoded, so preserved files cannot be counted"],
            certain=False,
            possible=["before_preserve", "preserved"],
        )
    own = len(handover.referenced_pages())
    preserved = handover.memory_map.folio_count
    if preserved > own:
        return MomentReading(
            "preserved",
            [
                no_sessions,
                f"the radix tree holds {preserved} folio(s), {preserved - own} more than the handover's own {own} "
                "metadata page(s): sessions or files were preserved (a session's blocks, a file's folios and metadata "
                "enter the tree at once)",
            ],
        )
    return MomentReading(
        "before_preserve",
        [no_sessions, f"the radix tree holds only the handover's own {own} metadata page(s): nothing preserved"],
    )
