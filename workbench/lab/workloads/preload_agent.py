"""The target side of the ``preload`` workload: an unmodified redis-server whose memory is memfds from birth, kept
across the kexec through LUO.

Before the kexec: prepare (start redis-server, the host's binary over the read-only 9p root, with the
``memfd_birth`` library preloaded, and ``SET`` the known data set of :mod:`~workbench.lab.workloads.preload_data`
over its unix socket), checkpoint (``SIGSTOP``, so its memory is quiescent, then every birth memfd taken with
``pidfd_getfd``), fingerprint (every page of every memfd, read with ``pread`` so that holes stay holes, and the data
set looked for in them), preserve (one LUO session, tokens 1000, 1001, ...), load, kexec. After it: restore
(retrieve every token), verify (fingerprint again and compare), data (the program's address space rebuilt from the
memfds and the mappings recorded before the kexec, and every key's value found intact in it), finish."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from workbench.lab.agent_core import PAGE, differing_pages, fingerprint, load_hasher
from workbench.lab.liveupdate import LiveUpdate
from workbench.lab.preload import PreloadLibrary, birth_memfds, preload_environment, take_memfd
from workbench.lab.protocol import FINGERPRINTS_AFTER, FINGERPRINTS_BEFORE, read_json, state_file
from workbench.lab.workloads.memfd import MemfdAgent
from workbench.lab.workloads.preload_data import RedisSocket, find_values, key_name, value_of

__all__ = ["PreloadAgent", "read_whole", "address_space"]

FIRST_TOKEN = 1000
_WORK = Path("/tmp/wb-preload")
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0


def read_whole(fd: int, size: int) -> np.ndarray:
    """The ``size`` bytes of the file ``fd`` (``pread``: a hole reads as zeros without allocating a page)."""
    buf = np.zeros(size, dtype=np.uint8)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        n = os.preadv(fd, [view[pos:]], pos)
        if n == 0:
            break
        pos += n
    return buf


def address_space(contents: list[np.ndarray], birth: list[dict]) -> list[bytes]:
    """The program's birth memory as it was mapped: each run of adjacent mappings joined into one buffer.

    :param contents: each memfd's bytes, in the order of ``birth``
    :param birth: each memfd's record from the checkpoint (``mappings``: ``[start, end, offset]``)"""
    pieces = sorted(
        (start, end, i, offset) for i, entry in enumerate(birth) for start, end, offset in entry["mappings"]
    )
    runs: list[bytes] = []
    current: list[bytes] = []
    last_end = None
    for start, end, i, offset in pieces:
        if current and start != last_end:
            runs.append(b"".join(current))
            current = []
        current.append(contents[i][offset : offset + (end - start)].tobytes())
        last_end = end
    if current:
        runs.append(b"".join(current))
    return runs


class PreloadAgent(MemfdAgent):
    """See the module's description; the hand-over, stand-down and verdict are the memfd agent's."""

    def prepare_and_kexec(self) -> None:
        req = self.request
        self.timed_setup("hasher", load_hasher)
        with self.phase("prepare"):
            luo = LiveUpdate()  # fails clearly, before anything else, on a kernel without LUO
            self.start_program()
            self.fill()
        self.pause("prepare")
        with self.phase("checkpoint"):
            os.kill(self.process.pid, signal.SIGSTOP)
            self.wait_stopped()
            found = birth_memfds(self.process.pid)
            if not found:
                raise RuntimeError(f"{req['program']} has no birth memfds: was the library preloaded?")
            memfds = [take_memfd(self.process.pid, m.fd) for m in found]
        self.state["birth"] = [
            {
                "token": FIRST_TOKEN + i,
                "fd_in_program": m.fd,
                "inode": m.inode,
                "size": m.size,
                "resident": m.resident,
                "mappings": [[b.start, b.end, b.offset] for b in m.mappings],
            }
            for i, m in enumerate(found)
        ]
        with self.phase("fingerprint"):
            contents = [read_whole(fd, m.size) for fd, m in zip(memfds, found, strict=True)]
            hashed = [fingerprint(c) for c in contents]
            np.save(self.results / FINGERPRINTS_BEFORE, np.concatenate([h for h, _ in hashed]))
            self.state["hash_impl"] = hashed[0][1]
        data = find_values(address_space(contents, self.state["birth"]), req["seed"], req["keys"], req["value_size"])
        self.state["data_before"] = data.as_dict()
        del contents
        self.save()
        preserve_s = []
        with self.phase("preserve"):
            session = luo.create_session(req["session"])
            for i, fd in enumerate(memfds):
                t0 = time.monotonic()
                session.preserve(fd, FIRST_TOKEN + i)
                preserve_s.append(time.monotonic() - t0)
        self.state["preserve_s"] = preserve_s
        self.state["session"] = session.kernel_name()
        self.hand_over(luo, session, memfds, [])

    def start_program(self) -> None:
        """redis-server under the library, on a unix socket, without persistence; waits until it answers."""
        req = self.request
        _WORK.mkdir(parents=True, exist_ok=True)
        library = PreloadLibrary(Path(req["library"]), "", "")
        env = preload_environment(
            library, threshold=req["threshold"], base={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(_WORK)}
        )
        self.socket_path = _WORK / "redis.sock"
        self.log = _WORK / "redis.log"
        argv = [req["program"], "--port", "0", "--unixsocket", str(self.socket_path), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(_WORK)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        self.state["program_pid"] = self.process.pid
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                client = RedisSocket(str(self.socket_path))
                try:
                    if client.call(b"PING") == b"+PONG":
                        return
                finally:
                    client.close()
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{req['program']} did not start; its log ends:\n" + "\n".join(tail))
            time.sleep(0.1)

    def fill(self) -> None:
        """``SET`` every key of the data set, then checks the key count redis reports."""
        req = self.request
        seed, keys, size = req["seed"], req["keys"], req["value_size"]
        client = RedisSocket(str(self.socket_path))
        try:
            items = ((key_name(seed, k).encode(), value_of(seed, k, size)) for k in range(keys))
            written = client.set_many(items)
            dbsize = int(client.call(b"DBSIZE")[1:])
        finally:
            client.close()
        if dbsize != keys:
            raise RuntimeError(f"redis holds {dbsize} keys after {written} SETs of {keys}")
        self.state["keys_written"] = written
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        rss = next((line.split()[1] for line in status if line.startswith("VmRSS:")), "0")
        self.state["program_rss"] = int(rss) * 1024

    def wait_stopped(self) -> None:
        """Until the program's every thread is stopped (state ``T`` in ``/proc/PID/task/*/stat``)."""
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        tasks = Path(f"/proc/{self.process.pid}/task")
        while True:
            states = []
            for task in tasks.iterdir():
                try:
                    text = (task / "stat").read_text()
                except FileNotFoundError:
                    continue
                states.append(text[text.rindex(")") + 2])
            if states and all(s == "T" for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the program did not stop within {_STOP_TIMEOUT_S} s (thread states {states})")
            time.sleep(0.01)

    # -- after the kexec -------------------------------------------------------------------------------------
    def restore(self) -> None:
        req = self.request
        self.kho_snapshot("in")
        birth = read_json(self.results / state_file("prepare"))["birth"]
        retrieve_s, fds = [], []
        with self.phase("restore"):
            luo = LiveUpdate()
            session = luo.retrieve_session(req["session"])
            for entry in birth:
                t0 = time.monotonic()
                fds.append(session.retrieve(entry["token"]))
                retrieve_s.append(time.monotonic() - t0)
        self.state["retrieve_s"] = retrieve_s
        self.pause("restore")
        self.timed_setup("hasher", load_hasher)
        with self.phase("verify"):
            sizes = [os.fstat(fd).st_size for fd in fds]
            contents = [read_whole(fd, size) for fd, size in zip(fds, sizes, strict=True)]
            after = [fingerprint(c)[0] for c in contents]
            before = np.load(self.results / FINGERPRINTS_BEFORE)
            report, at = [], 0
            for i, (entry, h) in enumerate(zip(birth, after, strict=True)):
                pages = entry["size"] // PAGE
                differing = differing_pages(before[at : at + pages], h)
                at += pages
                report.append(
                    {
                        "memfd": i,
                        "token": entry["token"],
                        "size": sizes[i],
                        "expected_size": entry["size"],
                        "pages": int(len(h)),
                        "differing_pages": differing[:1000],
                        "differing_count": len(differing),
                    }
                )
            np.save(self.results / FINGERPRINTS_AFTER, np.concatenate(after))
        with self.phase("data"):
            data = find_values(address_space(contents, birth), req["seed"], req["keys"], req["value_size"])
        self.state["data_after"] = data.as_dict()
        del contents
        self.record_verification(report)
        with self.phase("finish"):
            session.finish()
            for fd in fds:
                os.close(fd)
            session.close()
            luo.close()
        self.report_done()
