"""Imported first by `hb worker`'s fork server (multiprocessing's preload, rexec/worker.py), before it
serves any action: makes the fork server non-dumpable.

The fork server forks the worker_exec of action after action, possibly for different users, and each
worker_exec runs as its uid, in its namespaces. Without Yama (no /proc/sys/kernel/yama), a process may
ptrace, or write through /proc/PID/mem, any dumpable process of its uid: code run by one action's
worker_exec (a kind's parser bug) could write the fork server's memory, and every later worker_exec is
forked from it (reproduced: /proc/PARENT/mem opened for writing, PTRACE_SEIZE attached). Non-dumpable,
it can be traced only with CAP_SYS_PTRACE in the user namespace it was started in, which no confined
process has. The flag is copied to every process it forks (run_forked checks it before running an
action, so a fork server that could not set it runs none). It also installs the seccomp filter
(seccomp.install_syscall_filter: no keyctl, add_key, request_key, io_uring... for it and all it forks: the
worker's session keyring and its user's host keyring were readable by a kind, reproduced), and quiets a
warning (below)."""

import warnings

from ..seccomp import install_syscall_filter
from .confine import make_non_dumpable

make_non_dumpable()
install_syscall_filter()  # checked by run_forked before it runs an action
# the fork server is its sandbox's pid 1 (confine.confined_executable): every action's own bubblewrap,
# whose monitor has exited, ends as its child and is reaped there, which multiprocessing takes for
# something that "shouldn't happen" and says on the worker's stderr at every action
warnings.filterwarnings("ignore", message="forkserver: waitpid returned unexpected pid", category=UserWarning)
