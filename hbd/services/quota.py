"""Per-project quotas of tenants (hbd.toml's [quotas]): how many containers
a project may have, their vCPUs and memory, and its volumes' GiB.

A container holds its share from create to rm, whatever its state: what a
tenant may start is then known when it creates, and a stopped container
that could start again at any time is counted as the running one it may
become. The operator is bound by none of it. Going over is a 403 that says
which quota, what is in use, what was asked and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hbd.config import QuotaSettings
from hbd.errors import Forbidden
from hbd.services.container.hostconfig import vcpus_for
from hbd.services.scope import Scope

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass
class QuotaGuard:
    settings: QuotaSettings = field(default_factory=QuotaSettings)
    default_vcpus: int = 1
    default_memory_mib: int = 256

    def vcpus(self, host_config: dict[str, Any]) -> int:
        return vcpus_for(host_config, self.default_vcpus)

    def memory_mib(self, host_config: dict[str, Any]) -> int:
        memory = int(host_config.get("Memory") or 0)
        return math.ceil(memory / MIB) if memory > 0 else self.default_memory_mib

    def check_container(self, scope: Scope, wanted: dict[str, Any],
                        existing: Iterable[dict[str, Any]]) -> None:
        """A new container of HostConfig `wanted` beside the project's
        `existing` ones' HostConfigs."""
        if not scope.is_tenant:
            return
        others = list(existing)
        self._check(scope, "containers", len(others), 1, "")
        self._check(scope, "vcpus", sum(self.vcpus(hc) for hc in others),
                    self.vcpus(wanted), " vCPUs")
        self._check(scope, "memory_mib", sum(self.memory_mib(hc) for hc in others),
                    self.memory_mib(wanted), " MiB of memory")

    def check_volume(self, scope: Scope, wanted_bytes: int, existing_bytes: Iterable[int]
                     ) -> None:
        if not scope.is_tenant:
            return
        used = sum(existing_bytes)
        self._check(scope, "volume_gib", math.ceil(used / GIB), math.ceil(wanted_bytes / GIB),
                    " GiB of volumes")

    def _check(self, scope: Scope, kind: str, used: int, wanted: int, unit: str) -> None:
        assert scope.project is not None
        limit = self.settings.limit(kind, scope.project, scope.project_name)
        if limit and used + wanted > limit:
            raise Forbidden(f"quota exceeded for project {scope.project_name or scope.project}"
                            f": {kind} {limit}: {used}{unit} in use, {wanted}{unit} more "
                            "requested")
