"""The seccomp filter's program (hermetic_build/seccomp.py) for every machine it knows, run by a small
classic-BPF interpreter here: the refused calls (keyrings, io_uring, bpf, perf_event_open, userfaultfd)
of each ABI refused with ENOSYS, every other call allowed, an unknown ABI refused. The numbers are
checked against libseccomp's scmp_sys_resolver (the kernel's syscall tables) and the AUDIT_ARCH values
against linux/audit.h, so a machine this suite never runs on still gets the filter it needs."""

from __future__ import annotations

import errno
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hermetic_build.seccomp import _REFUSED_SYSCALLS, REFUSED_CALLS, syscall_filter

ALLOW, REFUSE = 0x7FFF0000, 0x00050000 | errno.ENOSYS
# libseccomp's names of the ABIs (scmp_sys_resolver -a); the audit.h name of each
ABIS = {
    0xC000003E: ("x86_64", "AUDIT_ARCH_X86_64"), 0x40000003: ("x86", "AUDIT_ARCH_I386"),
    0xC00000B7: ("aarch64", "AUDIT_ARCH_AARCH64"), 0x40000028: ("arm", "AUDIT_ARCH_ARM"),
    0xC0000015: ("ppc64le", "AUDIT_ARCH_PPC64LE"), 0x80000015: ("ppc64", "AUDIT_ARCH_PPC64"),
    0x00000014: ("ppc", "AUDIT_ARCH_PPC"), 0x80000016: ("s390x", "AUDIT_ARCH_S390X"),
    0x00000016: ("s390", "AUDIT_ARCH_S390"), 0xC00000F3: ("riscv64", "AUDIT_ARCH_RISCV64"),
    0x400000F3: ("riscv32", "AUDIT_ARCH_RISCV32"), 0xC0000102: ("loongarch64", "AUDIT_ARCH_LOONGARCH64"),
}
CALLS = REFUSED_CALLS


def run_bpf(program: bytes, arch: int, nr: int) -> int:
    """What the kernel's classic-BPF interpreter returns for a call `nr` of ABI `arch` (the opcodes
    syscall_filter uses: ld [abs], jeq #k, and #k, ret #k)."""
    data = struct.pack("=iI", nr, arch) + bytes(56)  # struct seccomp_data: nr, arch, ip, args
    insns = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x54:
            acc &= k
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x} at {pc - 1}")


@pytest.mark.parametrize("machine", sorted(_REFUSED_SYSCALLS))
def test_each_abi_of_each_machine_has_its_refused_calls_refused_and_nothing_else(machine):
    program = syscall_filter(machine)
    for arch, numbers, mask in _REFUSED_SYSCALLS[machine]:
        for nr in numbers:
            assert run_bpf(program, arch, nr) == REFUSE, (machine, hex(arch), nr)
            if mask is not None:  # x32: the same call with bit 30 set
                assert run_bpf(program, arch, nr | 0x40000000) == REFUSE
        for nr in (0, 1, 59, 60, 221, 231, min(numbers) - 1, max(numbers) + 1, 435, 0x7FFFFFFF):
            if nr not in numbers:
                assert run_bpf(program, arch, nr) == ALLOW, (machine, hex(arch), nr)
    assert run_bpf(program, 0xC0000008, 250) == REFUSE  # an ABI the machine does not run: nothing


def test_a_machine_without_numbers_gets_no_filter():
    assert syscall_filter("sparc64") is None


def test_the_numbers_are_the_kernels():
    """Each ABI's numbers as libseccomp resolves them (.ci/run installs it: Debian's `seccomp`);
    riscv32 and loongarch64, which this libseccomp may not know, use the generic table (asm-generic,
    the same as aarch64's)."""
    resolver = shutil.which("scmp_sys_resolver")
    assert resolver, "scmp_sys_resolver is missing: apt-get install seccomp (.ci/run installs it)"
    generic = tuple(int(subprocess.run([resolver, "-a", "aarch64", call], capture_output=True, text=True,
                                       check=True).stdout) for call in CALLS)
    for arches in _REFUSED_SYSCALLS.values():
        for arch, numbers, mask in arches:
            name = ABIS[arch][0]
            found = []
            for call in CALLS:
                proc = subprocess.run([resolver, "-a", name, call], capture_output=True, text=True, check=False)
                found.append(int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None)
            if None in found:
                assert name in ("riscv32", "loongarch64"), (name, found)
                assert numbers == generic, name
            else:
                assert numbers == tuple(found), (name, numbers, found)
            if mask is not None:  # x32: its numbers are x86_64's with bit 30
                x32 = [int(subprocess.run([resolver, "-a", "x32", call], capture_output=True, text=True,
                                          check=True).stdout) for call in CALLS]
                assert [n & mask for n in x32] == list(numbers)


def test_the_audit_arch_values_are_linux_audit_h():
    audit, elf = Path("/usr/include/linux/audit.h"), Path("/usr/include/linux/elf-em.h")
    assert audit.exists() and elf.exists(), "the kernel's headers are missing: apt-get install linux-libc-dev"
    values = {name: int(value, 0) for name, value in re.findall(r"#define\s+(EM_\w+)\s+(0x[0-9A-Fa-f]+|\d+)",
                                                               elf.read_text())}
    values.update({"__AUDIT_ARCH_64BIT": 0x80000000, "__AUDIT_ARCH_LE": 0x40000000})
    defined = dict(re.findall(r"#define\s+(AUDIT_ARCH_\w+)\s+\(([^)]*)\)", audit.read_text()))
    for arch, (_, name) in ABIS.items():
        assert eval(defined[name], {}, values) == arch, name  # noqa: S307 - "EM_X|__AUDIT_ARCH_LE" of the header
