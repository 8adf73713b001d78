# Molecule only: containers.podman's connection with pipelining.
#
# Molecule's podman driver names its hosts' connection `podman`; this file, on
# ANSIBLE_CONNECTION_PLUGINS, shadows that short name. The collection's plugin runs five
# `podman exec`s per module (mkdir, put, chmod, run, rm), ~1.5 s a task on the CI hosts;
# pipelining feeds the module on stdin of one `podman exec -i`, ~0.4 s. No SSH, no sudo
# prompts are involved, so the collection's reason for disabling it does not apply here.
from __future__ import annotations

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible_collections.containers.podman.plugins.connection.podman import (
    DOCUMENTATION,  # noqa: F401 - the options are the collection's
)
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)


class Connection(PodmanConnection):
    transport = "podman"
    has_pipelining = True

    def exec_command(self, cmd, in_data=None, sudoable=False):
        if in_data is None:
            return super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if not self._connected:
            self._connect()
        args = ["exec", "-i"]
        if self.user:
            args.extend(("--user", self.user))
        return self._podman(
            args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data
        )
