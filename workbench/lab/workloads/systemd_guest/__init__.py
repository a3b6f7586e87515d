"""What the ``systemd`` workload puts into the Debian guest: :mod:`~workbench.lab.workloads.systemd_guest.service`,
a standard-library-only program that the guest's own ``python3`` runs as a systemd service (it keeps memfds in its
file descriptor store) and as the operator who loads the next kernel and asks systemd for the kexec. Nothing here
imports the rest of the workbench: the guest has only its own Python."""

__all__: list[str] = []
