"""The workload protocol and registry: a new workload is one class, and the cycle's checks and request path take
it as they take the built-in ones."""

import json
from dataclasses import dataclass

import pytest

from workbench.lab.cycle import check, phases_of
from workbench.lab.errors import InvalidCycle, UnknownName
from workbench.lab.params import CycleParams
from workbench.lab.protocol import Request
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workload import Workload, agent_class, make_workload, register, workload_class, workload_names


@register
@dataclass
class ToyWorkload(Workload):
    """Preserves nothing but a counter, on the qemu target only."""

    name = "toy"
    agent = "workbench.lab.agent_core:Agent"
    phases_before_kexec = ("prepare", "load")
    phases_after_kexec = ("restore",)
    targets = ("qemu",)

    count: int = 3
    size: int = 1 << 30

    def validate(self) -> None:
        if self.count < 1:
            raise InvalidCycle("a toy needs a count of at least 1")

    def data_bytes(self) -> int:
        return self.size

    def request(self) -> dict:
        return {"count": self.count}

    def kernel_args(self) -> list[str]:
        return ["toy=1"]


def test_a_toy_workload_goes_through_the_cycles_checks_and_request_path(tmp_path):
    assert "toy" in workload_names() and workload_class("toy") is ToyWorkload
    toy = make_workload("toy", count=5)
    params = CycleParams(session="toys")
    check(toy, params, QemuTarget())
    with pytest.raises(InvalidCycle, match="count of at least 1"):
        check(make_workload("toy", count=0), params, QemuTarget())
    with pytest.raises(InvalidCycle, match="the toy workload has no parameter 'memfds'"):
        make_workload("toy", memfds=2)
    assert toy.memory_mb() == 2816  # 640 MiB + two copies of 1 GiB = 2688, rounded up to 256 MiB steps
    assert phases_of(toy) == ("boot", "prepare", "load", "kexec", "restore", "finish")
    assert QemuTarget(memory_mb=4096).memory_for(toy) == 4096
    Request(workload=toy.name, session=params.session, workload_fields=toy.request()).write(tmp_path)
    written = json.loads((tmp_path / "request.json").read_text())
    assert written["workload"] == "toy" and written["count"] == 5 and written["session"] == "toys"
    assert toy.record_params() == {"workload": "toy", "count": 5, "size": 1 << 30}
    assert agent_class("toy").__name__ == "Agent"


def test_builtin_workloads_are_found_by_name_and_unknown_ones_are_named():
    assert {"memfd", "converted", "criu"} <= set(workload_names())
    assert workload_class("memfd").name == "memfd"
    with pytest.raises(UnknownName, match="unknown workload 'teleport': choose from "):
        workload_class("teleport")


def test_register_needs_a_name_and_an_agent():
    class Nameless(Workload):
        pass

    with pytest.raises(TypeError, match="needs a name and an agent"):
        register(Nameless)


def test_page_sizes_are_checked():
    Workload.check_pages("size", 8192)
    Workload.check_pages("size", 0, allow_zero=True)
    with pytest.raises(InvalidCycle, match="size 4097 is not a positive multiple"):
        Workload.check_pages("size", 4097)
