"""The seccomp filter hb puts on what runs untrusted code: the kernel's keyrings closed (keyctl, add_key
and request_key fail with ENOSYS), and the other kernel interfaces of REFUSED_CALLS. Keyrings are not
namespaced, so a sandbox does not hide them: a process possesses the session keyring it inherited (a
login's, pam_keyinit; as root, root's) and may read its keys, and /proc/keys lists, and KEYCTL_LINK
attaches to its own keyring, the host user keyring of the uid it runs as, whose keys it then reads
(reproduced, with a real BotWorker and with `hb build`'s own sandbox). Docker's default profile refuses
the same calls. Its users: the confined worker_exec of `hb worker` (install_syscall_filter, installed in
itself) and every command and long-lived helper hb runs in bubblewrap (ActionExecution.run_command and
sandbox.start_helper, given to bubblewrap's --seccomp)."""

from __future__ import annotations

# The system calls the filter refuses, with ENOSYS (what a kernel without them answers, so programs that
# try io_uring fall back to epoll): the keyrings (above), and the kernel interfaces no build needs that a
# sandbox leaves open to any uid and most kernel exploits go through, as Docker's default profile refuses
# them: io_uring (its own asynchronous path into the kernel, disabled by Google on its fleet and by Docker
# since 25.0 for that reason), bpf, perf_event_open and userfaultfd (which holds a page fault open to win
# kernel races). Where a kernel refuses some of them to unprivileged uids already (sysctls), nothing
# changes.
REFUSED_CALLS = ("add_key", "request_key", "keyctl", "io_uring_setup", "io_uring_enter", "io_uring_register",
                 "perf_event_open", "bpf", "userfaultfd")
# Their numbers, in that order, per platform.machine(): (AUDIT_ARCH, numbers, mask of the number) for each
# ABI a kernel of that family may run, the native one first (x32's numbers carry bit 30 on x86_64). A
# 32-bit userland reports its own machine (i686, armv8l under `linux32`) on a 64-bit kernel, whose 64-bit
# programs the sandbox may run too: each family lists all its ABIs, whichever member hb runs as. From
# the kernel's syscall tables, as libseccomp's scmp_sys_resolver gives them (a test checks each against
# it); the AUDIT_ARCH values from linux/audit.h.
_GENERIC = (217, 218, 219, 425, 426, 427, 241, 280, 282)  # asm-generic/unistd.h: arm64, riscv, loongarch
_X86_64 = (0xC000003E, (248, 249, 250, 425, 426, 427, 298, 321, 323), 0xBFFFFFFF)
_I386 = (0x40000003, (286, 287, 288, 425, 426, 427, 336, 357, 374), None)
_AARCH64 = (0xC00000B7, _GENERIC, None)
_ARM = (0x40000028, (309, 310, 311, 425, 426, 427, 364, 386, 388), None)
_POWERPC = (269, 270, 271, 425, 426, 427, 319, 361, 364)
_PPC64LE, _PPC64, _PPC = (0xC0000015, _POWERPC, None), (0x80000015, _POWERPC, None), (0x00000014, _POWERPC, None)
_S390_CALLS = (278, 279, 280, 425, 426, 427, 331, 351, 355)
_S390X, _S390 = (0x80000016, _S390_CALLS, None), (0x00000016, _S390_CALLS, None)
_RISCV64, _RISCV32 = (0xC00000F3, _GENERIC, None), (0x400000F3, _GENERIC, None)
_LOONGARCH64 = (0xC0000102, _GENERIC, None)
_REFUSED_SYSCALLS = {
    "x86_64": (_X86_64, _I386), "i386": (_I386, _X86_64), "i586": (_I386, _X86_64), "i686": (_I386, _X86_64),
    "aarch64": (_AARCH64, _ARM), "armv7l": (_ARM, _AARCH64), "armv8l": (_ARM, _AARCH64),
    "ppc64le": (_PPC64LE,), "ppc64": (_PPC64, _PPC), "s390x": (_S390X, _S390),
    "riscv64": (_RISCV64, _RISCV32), "loongarch64": (_LOONGARCH64,),
}


def syscall_filter(machine: str | None = None) -> bytes | None:
    """The classic-BPF program (struct sock_filter[]) of the filter on this machine (or on
    `machine`, a platform.machine() value); None where its syscall numbers are not known. A process of
    another ABI than those listed gets ENOSYS for every call (no such process runs on these machines)."""
    import errno
    import platform
    import struct

    arches = _REFUSED_SYSCALLS.get(machine or platform.machine())
    if not arches:
        return None
    ld_abs, jeq, alu_and, ret = 0x20, 0x15, 0x54, 0x06
    allow, refuse = 0x7FFF0000, 0x00050000 | errno.ENOSYS  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    program: list[tuple] = [(ld_abs, 0, 0, 4)]  # seccomp_data.arch
    for arch, numbers, mask in arches:
        block = [(ld_abs, 0, 0, 0)] + ([(alu_and, 0, 0, mask)] if mask else [])  # seccomp_data.nr
        block += [(jeq, "REFUSE", 0, n) for n in numbers] + [(ret, 0, 0, allow)]
        program.append((jeq, 0, len(block), arch))  # another ABI: the next block
        program += block
    program.append((ret, 0, 0, refuse))
    return b"".join(struct.pack("=HBBI", code, len(program) - 1 - i - 1 if jt == "REFUSE" else jt, jf, k)
                    for i, (code, jt, jf, k) in enumerate(program))


def install_syscall_filter() -> bool | None:
    """Install the filter (syscall_filter) in this thread, inherited by everything it
    starts: True when installed, None where this machine's syscall numbers are not known, False where
    the kernel refused."""
    import ctypes

    program = syscall_filter()
    if program is None:
        return None

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
        if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS (bubblewrap has set it already)
            return False
        fprog = SockFprog(len(program) // 8, program)
        return libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    except (OSError, AttributeError):
        return False


def syscall_filter_active() -> bool:
    """Whether the filter is on this thread: a keyring call fails with ENOSYS (or a kernel without keyrings)."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        arches = _REFUSED_SYSCALLS.get(__import__("platform").machine())
        if not arches:
            return False
        number = arches[0][1][2]  # keyctl of the native ABI
        # KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, not created
        result = libc.syscall(ctypes.c_long(number), ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(0))
        return result == -1 and ctypes.get_errno() == errno.ENOSYS
    except (OSError, AttributeError):
        return False
