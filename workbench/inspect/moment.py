"""Which moment of a live update a kernel is at, from its own LUO objects (read with drgn), with the evidence.

The moments are :data:`workbench.abi.moment.MOMENTS`. In the kernel that hands over: ``before_preserve`` (no file
in an outgoing session), ``preserved`` (files in outgoing sessions, ``luo_ser_out->sessions_pa`` still 0),
``serialized`` (``liveupdate_reboot()`` has set it). In a kernel started by a KHO kexec whose predecessor handed
over sessions (``luo_session_global.incoming.active``): ``next_kernel_pending`` while the incoming session list
is still a restored ``kho_block_set`` (``incoming.block_set.head_pa`` set: LUO deserializes it at the first open
of ``/dev/liveupdate`` and then destroys the set), ``deserialized`` once it is turned into sessions of which some
are not retrieved, ``retrieved`` when all are and some still hold files, ``finished`` when every one is finished
(retrieved with no file left) or gone. Once the incoming update is finished, new outgoing sessions start the next
update's moments.

:func:`moment_facts` gathers the facts (:class:`MomentFacts`); :func:`moment_of` decides, without drgn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import drgn

from workbench.inspect._util import global_object, has_member, member
from workbench.inspect.kho import is_kho_boot
from workbench.inspect.luo import (
    for_each_incoming_session,
    for_each_outgoing_session,
    for_each_session_file,
    luo_file_info,
    session_finished,
    session_name,
)

if TYPE_CHECKING:
    from workbench.abi.moment import MomentReading

__all__ = ["IncomingSession", "MomentFacts", "moment_facts", "moment_of", "live_update_moment"]


@dataclass(frozen=True)
class IncomingSession:
    """One deserialized incoming session: its name, whether it was retrieved and finished, its files and how
    many of them were retrieved."""

    name: str
    retrieved: bool
    finished: bool
    files: int
    files_retrieved: int


@dataclass(frozen=True)
class MomentFacts:
    """The kernel objects that decide the moment."""

    kexec_boot: bool  # kho_in.fdt_phys is set
    incoming_active: bool  # luo_session_global.incoming.active: the previous kernel handed over sessions
    incoming_pending_pa: int  # incoming.block_set.head_pa: the handed-over session list, until deserialized
    incoming_pending_blocks: int  # incoming.block_set.nblocks
    incoming: list[IncomingSession] = field(default_factory=list)
    outgoing_sessions: int = 0
    outgoing_files: int = 0
    outgoing_serialized_pa: int = 0  # luo_ser_out->sessions_pa
    device_open: bool | None = None


def moment_facts(prog: drgn.Program) -> MomentFacts:
    """Reads the facts :func:`moment_of` decides from.

    :param prog: kernel program
    """
    sessions = global_object(prog, "luo_session_global", "CONFIG_LIVEUPDATE")
    incoming_header = sessions.incoming
    block_set = incoming_header.block_set if has_member(incoming_header, "block_set") else None
    incoming = []
    for s in for_each_incoming_session(prog):
        files = [luo_file_info(f) for f in for_each_session_file(s)]
        incoming.append(
            IncomingSession(
                session_name(s),
                bool(s.retrieved.value_()),
                session_finished(s),
                len(files),
                sum(f.retrieved for f in files),
            )
        )
    outgoing = list(for_each_outgoing_session(prog))
    luo = global_object(prog, "luo_global", "CONFIG_LIVEUPDATE")
    ser = luo.luo_ser_out if has_member(luo, "luo_ser_out") else None
    try:
        device_open: bool | None = bool(prog["luo_dev"].in_use.counter.value_())
    except LookupError:
        device_open = None
    return MomentFacts(
        kexec_boot=is_kho_boot(prog),
        incoming_active=bool(member(incoming_header, "active").value_()),
        incoming_pending_pa=int(block_set.head_pa.value_()) if block_set is not None else 0,
        incoming_pending_blocks=int(block_set.nblocks.value_()) if block_set is not None else 0,
        incoming=incoming,
        outgoing_sessions=len(outgoing),
        outgoing_files=sum(sum(1 for _ in for_each_session_file(s)) for s in outgoing),
        outgoing_serialized_pa=int(ser.sessions_pa.value_()) if ser is not None and ser.value_() else 0,
        device_open=device_open,
    )


def _outgoing_moment(facts: MomentFacts, evidence: list[str]) -> MomentReading:
    from workbench.abi.moment import MomentReading

    if facts.outgoing_serialized_pa:
        evidence.append(
            f"luo_ser_out->sessions_pa is {facts.outgoing_serialized_pa:#x}: liveupdate_reboot() serialized the "
            f"{facts.outgoing_sessions} outgoing session(s)"
        )
        return MomentReading("serialized", evidence)
    if facts.outgoing_files:
        evidence.append(
            f"{facts.outgoing_sessions} outgoing session(s) hold {facts.outgoing_files} preserved file(s) and "
            "luo_ser_out->sessions_pa is 0: LUO serializes them only at reboot"
        )
        return MomentReading("preserved", evidence)
    evidence.append(
        f"{facts.outgoing_sessions} outgoing session(s), no preserved file"
        + ("" if facts.outgoing_sessions else ": nothing is preserved yet")
    )
    return MomentReading("before_preserve", evidence)


def moment_of(facts: MomentFacts) -> MomentReading:
    """The moment the facts show (see the module's documentation).

    :param facts: from :func:`moment_facts`
    """
    # imported here: workbench.abi compiles numba kernels on import, which an unprivileged process cannot cache
    from workbench.abi.moment import MomentReading

    evidence: list[str] = []
    if not facts.kexec_boot:
        evidence.append("kho_in.fdt_phys is 0: this kernel was not started by a KHO kexec")
        return _outgoing_moment(facts, evidence)
    if not facts.incoming_active:
        evidence.append(
            "started by a KHO kexec, but luo_session_global.incoming is not active: the previous kernel handed "
            "over no session"
        )
        return _outgoing_moment(facts, evidence)
    opened = {True: "open", False: "not open", None: "unknown"}[facts.device_open]
    if facts.incoming_pending_pa:
        evidence.append(
            f"luo_session_global.incoming.block_set.head_pa is {facts.incoming_pending_pa:#x} "
            f"({facts.incoming_pending_blocks} block(s)): the handed-over session list is not deserialized yet; "
            f"LUO deserializes it at the first open of /dev/liveupdate (now {opened})"
        )
        return MomentReading("next_kernel_pending", evidence)
    names = ", ".join(s.name for s in facts.incoming) or "none left"
    evidence.append(f"the incoming session list was deserialized (block_set.head_pa is 0); sessions: {names}")
    waiting = [s.name for s in facts.incoming if not s.retrieved]
    if waiting:
        evidence.append(f"{len(waiting)} of {len(facts.incoming)} incoming session(s) not retrieved: {waiting}")
        return MomentReading("deserialized", evidence)
    open_sessions = [s for s in facts.incoming if not s.finished]
    if open_sessions:
        files = sum(s.files for s in open_sessions)
        retrieved = sum(s.files_retrieved for s in open_sessions)
        evidence.append(
            f"every incoming session retrieved; {len(open_sessions)} not finished, holding {files} file(s) "
            f"({retrieved} retrieved)"
        )
        return MomentReading("retrieved", evidence)
    evidence.append(
        f"every incoming session finished ({len(facts.incoming)} still open, with no file left)"
        if facts.incoming
        else "no incoming session left: each was finished and closed"
    )
    if facts.outgoing_sessions:
        evidence.append("the next live update has begun:")
        return _outgoing_moment(facts, evidence)
    return MomentReading("finished", evidence)


def live_update_moment(prog: drgn.Program) -> dict:
    """The moment of ``prog`` as JSON-ready fields: ``moment``, ``moment_evidence``, ``moment_certain``,
    ``moment_possible`` and the ``moment_facts``.

    :param prog: kernel program
    """
    facts = moment_facts(prog)
    return moment_of(facts).as_dict() | {"moment_facts": asdict(facts)}
