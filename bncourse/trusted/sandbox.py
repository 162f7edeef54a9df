"""The sandbox every kernel that runs student code starts in: bubblewrap, resource limits, no network.

Per kernel (see :func:`bwrap_command`): the system, the Python installation, the virtual
environment and the ``bncourse`` package (less the assignments' test versions) are mounted
read-only; everything else of the machine, the course folder, ``solutions/``, other submissions
and the gradebook included, does not exist inside. Writable: ``/tmp``, a fresh tmpfs of bounded size that holds the kernel's working folder
``/tmp/work``, and two folders of the grader's: the kernel's sockets and its answers (in
``/dev/shm`` where it exists, so that what is written there is memory the control group
counts). No network (its
own network namespace; the kernel talks to the grader over ZeroMQ's IPC transport, Unix sockets
in a bound folder), its own PID, IPC and UTS namespaces, a new session, killed with the grader's
process. ``prlimit`` bounds memory, processes, file size, open files and CPU time; where the
grader runs as root the kernel runs as an unprivileged user (:attr:`Sandbox.uid`). A seccomp
filter (:mod:`bncourse.trusted.seccomp`) keeps the kernel and its children from the kernel
keyrings, which no namespace separates, and ``/proc/keys`` is hidden.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, Integer, Unicode
from traitlets.config import Configurable

import bncourse
from bncourse.trusted import seccomp
from bncourse.trusted.cgroups import KernelCgroup

__all__ = [
    "Sandbox",
    "SandboxedKernelManager",
    "SandboxUnavailable",
    "bwrap_command",
    "unavailable_reason",
]


class SandboxUnavailable(RuntimeError):
    """No sandbox can start on this machine, and unsandboxed grading was not allowed."""


class Sandbox(Configurable):
    """Limits of the sandbox (``c.Sandbox.*`` in ``nbgrader_config.py``)."""

    enabled = Bool(
        True,
        help="False starts kernels without the sandbox (to measure its cost); grading then "
        "also needs allow_unsandboxed, and every summary says so.",
    ).tag(config=True)
    allow_unsandboxed = Bool(
        False,
        help="Grade without a sandbox where none can start (every summary then says so). "
        "Student code can then read and change everything the grader can.",
    ).tag(config=True)
    memory_limit = Integer(4 * 2**30, help="Bytes of memory a kernel may allocate.").tag(
        config=True
    )
    processes = Integer(
        256, help="Processes and threads of a kernel and everything it starts."
    ).tag(config=True)
    cgroup = Bool(
        True,
        help="Also bound the memory and the processes of each sandbox as a whole with a control "
        "group, where the machine lets the grader create one.",
    ).tag(config=True)
    file_size = Integer(2**30, help="Largest file a kernel may write, in bytes.").tag(config=True)
    open_files = Integer(1024, help="Open files per process.").tag(config=True)
    cpu_seconds = Integer(1800, help="CPU time of the kernel process, in seconds.").tag(config=True)
    notebook_timeout = Integer(
        1200, help="Wall-clock seconds for a whole notebook, grading included."
    ).tag(config=True)
    uid = Integer(
        0,
        help="User the kernel runs as when the grader runs as root; 0 (the default) picks two "
        "unused ones per grading process, taken in turn by consecutive kernels, so that no two "
        "kernels share a process budget (a kernel started ahead runs beside the current one). "
        "A fixed uid turns starting kernels ahead off.",
    ).tag(config=True)
    gid = Integer(65534, help="Group the kernel runs as when the grader runs as root.").tag(
        config=True
    )
    tmp_size = Integer(1 * 2**30, help="Bytes of /tmp, the kernel's working folder included.").tag(
        config=True
    )
    bwrap = Unicode("bwrap", help="The bubblewrap executable.").tag(config=True)

    def unavailable(self) -> str | None:
        """Why kernels will start without the sandbox, or None when they start in it."""
        if not self.enabled:
            return "the sandbox is turned off (c.Sandbox.enabled = False)"
        return unavailable_reason(self.bwrap)

    def prlimit_args(self) -> list[str]:
        return [
            "prlimit",
            f"--data={self.memory_limit}",
            f"--nproc={self.processes}",
            f"--fsize={self.file_size}",
            f"--nofile={self.open_files}",
            f"--cpu={self.cpu_seconds}",
            "--core=0",
            "--",
        ]

    @property
    def drops_privileges(self) -> bool:
        return os.geteuid() == 0

    @property
    def sandbox_uid(self) -> int:
        """The kernel's user: :attr:`uid`, or one of 200000-299999 chosen by this process (its
        second user is 100000 above, see :func:`bncourse.trusted.spare.new_slot`)."""
        return self.uid or 200_000 + os.getpid() % 100_000

    def owner(self) -> tuple[int, int]:
        """Who owns the sandbox's writable folders."""
        if self.drops_privileges:
            return self.sandbox_uid, self.gid
        return os.getuid(), os.getgid()


def _read_only_roots() -> list[Path]:
    """What a kernel needs to see: the system, Python, the venv and the bncourse package.

    An allowlist, never derived from the working folder or from ``sys.path`` entries outside the
    Python installations (a repository or a tests folder on ``sys.path`` would otherwise show the
    course itself): ``sys.prefix`` (the virtual environment), the base installation, the real
    executable's installation and the ``bncourse`` package folder.
    """
    python = Path(shutil.which("python3", path=str(Path(sys.executable).parent)) or sys.executable)
    roots = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        Path(sys.base_exec_prefix),
        python.resolve().parent.parent,
        Path(bncourse.__file__).resolve().parent,
    ]
    unique: list[Path] = []
    for root in sorted({r.resolve() for r in roots}, key=lambda p: len(p.parts)):
        if root.parts[:2] in (("/", "usr"), ("/", "etc")):
            continue  # bound whole
        if not any(u == root or u in root.parents for u in unique):
            unique.append(root)
    return unique


WORKDIR = "/tmp/work"
"""The kernel's working folder inside the sandbox."""

HIDDEN_IN_PACKAGE = ("instructor/assignments",)
"""Folders of the package a kernel never needs and must not read: the assignments' test
versions (``bncourse check`` outside a course), whose hidden tests stay outside the kernel."""


def shared_memory_folder() -> str | None:
    """A folder on the machine's shared-memory tmpfs for the grader's sandbox folders, if any."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def bwrap_command(
    argv: list[str],
    sandbox: Sandbox,
    *,
    writable: list[Path],
    readable: list[Path] = (),
    seccomp_fd: int,
) -> list[str]:
    """``argv`` wrapped in bubblewrap, prlimit and (as root) setpriv; see the module docstring.

    ``seccomp_fd`` is a descriptor of :func:`bncourse.trusted.seccomp.filter_fd` that the process
    running the command inherits (``pass_fds``).
    """
    args = [sandbox.bwrap, "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        target = Path("/") / name
        if target.is_symlink():
            args += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            args += ["--ro-bind", str(target), str(target)]
    args += ["--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev"]
    # Keys and key counts of every user (the keyrings are not namespaced), hidden as Docker hides
    # them: the mount is nodev, so opening them fails.
    for name in ("keys", "key-users"):
        if Path("/proc", name).exists():
            args += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    args += ["--perms", "1777", "--size", str(sandbox.tmp_size), "--tmpfs", "/tmp"]
    args += ["--perms", "1777", "--dir", WORKDIR]
    gpus = sorted(glob.glob("/dev/nvidia*"))
    for device in gpus:
        args += ["--dev-bind", device, device]
    if gpus:
        args += ["--ro-bind", "/sys", "/sys"]
    made: set[Path] = {Path("/"), Path("/tmp"), Path(WORKDIR), Path("/usr"), Path("/etc")}
    made |= {Path("/proc")}
    made |= {Path("/dev")}

    def parents(path: Path) -> list[str]:
        out = []
        for parent in reversed(path.parents):
            if parent not in made:
                made.add(parent)
                out += ["--perms", "0755", "--dir", str(parent)]
        made.add(path)
        return out

    binds = [(p, "--ro-bind") for p in _read_only_roots()]
    binds += [(Path(p), "--ro-bind") for p in readable]
    binds += [(Path(p), "--bind") for p in writable]
    for path, flag in sorted(binds, key=lambda b: len(b[0].parts)):
        if path in (Path("/usr"), Path("/etc")):
            continue
        args += [*parents(path), flag, str(path), str(path)]
    package = Path(bncourse.__file__).resolve().parent
    for folder in HIDDEN_IN_PACKAGE:
        if (package / folder).is_dir():
            args += ["--tmpfs", str(package / folder)]  # an empty folder over it
    args += [
        "--chdir",
        WORKDIR,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--seccomp",
        str(seccomp_fd),
        "--",
        *sandbox.prlimit_args(),
    ]
    if sandbox.drops_privileges:
        args += [
            "setpriv",
            f"--reuid={sandbox.sandbox_uid}",
            f"--regid={sandbox.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
    # jupyter_client always names its own process as the kernel's parent; that PID means nothing
    # in the sandbox's PID namespace, where the kernel would take it for dead and exit. PID 1 (the
    # sandbox's init, which dies with the grader) tells ipykernel not to watch for a parent.
    return [*args, "/usr/bin/env", "JPY_PARENT_PID=1", *argv]


@cache
def unavailable_reason(executable: str = "bwrap") -> str | None:
    """Why no sandbox can start here (None when one can): tried once per process."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (bubblewrap); this is {sys.platform}"
    if shutil.which(executable) is None:
        return (
            f"bubblewrap ({executable}) is not installed: on Debian or Ubuntu run "
            "`sudo apt-get install bubblewrap` (make test installs it)"
        )
    for tool in ("prlimit", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    if reason := seccomp.unavailable_reason():
        return reason
    probe = Sandbox()
    # Exits 0 only where keyctl fails with EPERM: the filter is in force.
    check = (
        "import ctypes, errno, sys; libc = ctypes.CDLL(None, use_errno=True); "
        f"r = libc.syscall({seccomp.syscall_number('keyctl')}, 0, ctypes.c_long(-3), 0); "
        "sys.exit(0 if r == -1 and ctypes.get_errno() == errno.EPERM else 3)"
    )
    fd = seccomp.filter_fd()
    try:
        command = bwrap_command([sys.executable, "-c", check], probe, writable=[], seccomp_fd=fd)
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False, pass_fds=(fd,)
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not start a sandbox: {error}"
    finally:
        os.close(fd)
    if proc.returncode == 3:
        return "the sandbox's seccomp filter did not block keyctl (kernel keyrings)"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no message"]
        return (
            f"bubblewrap could not start a sandbox ({detail[0]}); it needs user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, or run the grader as root) and, in a "
            "container, permission to create namespaces"
        )
    return None


def prepare_folder(path: Path, sandbox: Sandbox, mode: int = 0o700) -> Path:
    """Create ``path`` (if needed) owned by the sandbox's user."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = sandbox.owner()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels start in the sandbox, reached over IPC sockets.

    Call :meth:`configure` before starting; the kernel's working folder is :data:`WORKDIR`,
    whatever cwd nbclient asks for.
    """

    sandbox_settings: Sandbox
    sockets: Path
    extra_writable: list[Path]
    extra_readable: list[Path]
    kernel_arguments: list[str]

    def configure(
        self,
        sandbox: Sandbox,
        *,
        sockets: Path,
        writable: list[Path] = (),
        readable: list[Path] = (),
        arguments: list[str] = (),
    ) -> None:
        """Where the kernel's sockets go, what else it may write and read, and ``arguments``
        added to every kernel command of this manager."""
        self.sandbox_settings = sandbox
        self.kernel_arguments = list(arguments)
        self.sockets = Path(sockets)
        self.extra_writable, self.extra_readable = list(writable), list(readable)
        self._cgroup: KernelCgroup | None = None
        self._seccomp_fd: int | None = None
        self.transport = "ipc"
        self.ip = str(self.sockets / "kernel")
        self.connection_file = str(self.sockets / "kernel.json")

    async def _async_pre_start_kernel(self, **kw):
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        self.kernel_spec.interrupt_mode = "message"  # a signal cannot reach into the sandbox
        return cmd, kw

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd([*(extra_arguments or []), *self.kernel_arguments])
        python = shutil.which(cmd[0], path=os.environ.get("PATH")) or cmd[0]
        cmd[0] = str(Path(python).absolute())
        settings = self.sandbox_settings
        if settings.cgroup and self._cgroup is None:
            self._cgroup = KernelCgroup.create(settings.memory_limit, settings.processes)
        self._close_seccomp_fd()
        self._seccomp_fd = seccomp.filter_fd()  # read by bwrap; closed here once it is launched
        wrapped = bwrap_command(
            cmd,
            self.sandbox_settings,
            writable=[self.sockets, *self.extra_writable],
            readable=self.extra_readable,
            seccomp_fd=self._seccomp_fd,
        )
        return self._cgroup.wrap(wrapped) if self._cgroup else wrapped

    @property
    def limited_by_cgroup(self) -> bool:
        """Whether this kernel's sandbox is bounded as a whole, not only per process."""
        return self._cgroup is not None

    def _close_seccomp_fd(self) -> None:
        if self._seccomp_fd is not None:
            os.close(self._seccomp_fd)
            self._seccomp_fd = None

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        self._close_seccomp_fd()
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None

    cleanup_resources = _async_cleanup_resources

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw):
        uid, gid = self.sandbox_settings.owner()
        os.chown(self.connection_file, uid, gid)
        kw["cwd"] = "/"  # the sandbox starts in WORKDIR
        kw["env"] = kernel_environment()
        # What the kernel writes to its own stdout and stderr is the submission's: never the
        # grader's terminal or log, where it could pass for the grader's own lines.
        kw["stdout"] = kw["stderr"] = subprocess.DEVNULL
        kw["pass_fds"] = (self._seccomp_fd,)
        try:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        finally:
            self._close_seccomp_fd()


def kernel_environment() -> dict[str, str]:
    """The environment of a sandboxed kernel: nothing of the grader's but what a kernel needs."""
    env = {
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        "HOME": "/tmp",
        "IPYTHONDIR": "/tmp/.ipython",
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    for name in (
        "PYTHONHASHSEED",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "NBGRADER_EXECUTION",
        "TZ",
    ):
        if name in os.environ:
            env[name] = os.environ[name]
    return env
