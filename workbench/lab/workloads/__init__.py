"""The built-in workloads, one module each (see :mod:`workbench.lab.workload` for the protocol and the registry):
:mod:`~workbench.lab.workloads.memfd`, :mod:`~workbench.lab.workloads.converted`,
:mod:`~workbench.lab.workloads.criu`. Nothing is imported here: the registry imports a workload when it is named."""
