"""A CRIU-kept process's downtime, cut at the host timestamps of the agent's marks."""

from __future__ import annotations

from typing import Any

__all__ = ["downtime_breakdown"]


def _first(marks: list[tuple[str, dict, float]], event: str, after: float = float("-inf"), **match) -> float | None:
    for name, data, t in marks:
        if name == event and t >= after and all(data.get(k) == v for k, v in match.items()):
            return t
    return None


def downtime_breakdown(marks: list[tuple[str, dict, float]], prepare: dict) -> dict[str, Any]:
    """The process's downtime, cut at the host timestamps of the marks: from the freeze (the dump's start plus the
    moment CRIU's log says it seized the task) to the workload's own first ``workload-resumed`` line. The steps add
    up to the downtime: dump, convert, preserve, to-kexec (state file, sync), blackout (kexec to the agent in the
    next kernel), retrieve, images, criu-init, restore (``criu restore`` until the process's first line)."""
    t_dump = _first(marks, "phase-begin", phase="dump")
    t_kexec = _first(marks, "kexec")
    if t_dump is None or t_kexec is None:
        return {}
    t_freeze = t_dump + (prepare.get("criu", {}).get("seize_offset_s") or 0.0)
    points = [("freeze", t_freeze)]
    for phase in ("dump", "convert", "preserve"):
        t = _first(marks, "phase-end", after=t_dump, phase=phase)
        if t is not None:
            points.append((phase, t))
    points.append(("to-kexec", t_kexec))
    t_back = _first(marks, "agent-start", after=t_kexec, phase="restore")
    t_resumed = _first(marks, "workload-resumed", after=t_kexec)
    if t_back is not None:
        points.append(("blackout", t_back))
        for phase in ("retrieve", "images", "criu-init"):
            t = _first(marks, "phase-end", after=t_back, phase=phase)
            if t is not None:
                points.append((phase, t))
    out: dict[str, Any] = {"freeze_to_kexec_s": t_kexec - t_freeze}
    if t_resumed is not None:
        points.append(("restore", t_resumed))
        out["downtime_s"] = t_resumed - t_freeze
        t_restored = _first(marks, "phase-end", after=t_resumed, phase="restore")
        if t_restored is not None:
            out["criu_exit_after_resume_s"] = t_restored - t_resumed
    out["steps"] = {name: t - prev for (_, prev), (name, t) in zip(points, points[1:], strict=False)}
    return out
