"""GPU inventory from ``nvidia-smi`` and a scheduler that places trials on GPUs.

Shared by the platforms that place trials on machines they manage (local, remote). The query is
``nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits``
plus ``--query-compute-apps=gpu_uuid`` is avoided: a GPU counts as *active* when it has memory in use
above ``ACTIVE_MEMORY_MB`` or utilisation above zero.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field

from ..errors import PlatformError

__all__ = ["GpuInfo", "GpuScheduler", "NVIDIA_SMI_QUERY", "parse_nvidia_smi", "query_local_gpus"]

NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,memory.used,memory.total,utilization.gpu",
    "--format=csv,noheader,nounits",
]
ACTIVE_MEMORY_MB = 256


@dataclass(frozen=True)
class GpuInfo:
    index: int
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    utilization: float = 0.0

    @property
    def active(self) -> bool:
        """Whether another process is using the GPU."""
        return self.memory_used_mb > ACTIVE_MEMORY_MB or self.utilization > 0


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Parse the CSV that :data:`NVIDIA_SMI_QUERY` prints. Unparsable lines raise PlatformError."""
    gpus = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            index = int(parts[0])
            nums = [float(p) if p not in ("[N/A]", "N/A", "") else 0.0 for p in parts[1:4]]
        except (ValueError, IndexError) as exc:
            raise PlatformError(f"Cannot parse line {lineno} of nvidia-smi's output: {line!r}.") from exc
        nums += [0.0] * (3 - len(nums))
        gpus.append(GpuInfo(index, nums[0], nums[1], nums[2]))
    return gpus


async def query_local_gpus() -> list[GpuInfo]:
    """The GPUs of this machine; empty when ``nvidia-smi`` is not installed."""
    if shutil.which("nvidia-smi") is None:
        return []
    proc = await asyncio.create_subprocess_exec(
        *NVIDIA_SMI_QUERY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise PlatformError(f"nvidia-smi failed with exit code {proc.returncode}: {err.decode(errors='replace')}")
    return parse_nvidia_smi(out.decode())


@dataclass
class GpuScheduler:
    """Assigns GPU indices to trials on one machine.

    ``gpu_indices`` restricts the usable GPUs; each GPU takes up to ``max_trials_per_gpu`` trials;
    GPUs that are busy with other processes are skipped unless ``use_active_gpu``.
    """

    gpus: list[GpuInfo]
    gpu_indices: list[int] | None = None
    max_trials_per_gpu: int = 1
    use_active_gpu: bool = False
    _load: dict[int, int] = field(default_factory=dict)
    _owner: dict[str, list[int]] = field(default_factory=dict)

    def usable(self) -> list[GpuInfo]:
        allowed = set(self.gpu_indices) if self.gpu_indices is not None else None
        return [
            g for g in self.gpus if (allowed is None or g.index in allowed) and (self.use_active_gpu or not g.active)
        ]

    def capacity(self) -> int:
        """How many GPUs exist for trials at all (to reject impossible requests early)."""
        return len(self.usable())

    def try_assign(self, trial_id: str, count: int) -> list[int] | None:
        """Reserve ``count`` GPUs for a trial, least loaded first; None if they are not free now."""
        if count <= 0:
            self._owner[trial_id] = []
            return []
        free = [g.index for g in self.usable() if self._load.get(g.index, 0) < self.max_trials_per_gpu]
        if len(free) < count:
            return None
        free.sort(key=lambda i: (self._load.get(i, 0), i))
        chosen = sorted(free[:count])
        for i in chosen:
            self._load[i] = self._load.get(i, 0) + 1
        self._owner[trial_id] = chosen
        return chosen

    def assign_exact(self, trial_id: str, indices: list[int]) -> None:
        """Record GPUs already in use by a trial (re-attach)."""
        for i in indices:
            self._load[i] = self._load.get(i, 0) + 1
        self._owner[trial_id] = list(indices)

    def release(self, trial_id: str) -> None:
        for i in self._owner.pop(trial_id, []):
            self._load[i] = max(0, self._load.get(i, 0) - 1)
