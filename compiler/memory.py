"""How much more memory this process can take, for the checks ``load()`` makes before a runtime
allocates an artifact's weights: an artifact larger than that is refused with one clear line,
where onnxruntime would fail deep inside its allocator (or the kernel's OOM killer would end the
process) part-way through loading.

The figure is the smallest of: the memory the system can still give (``MemAvailable``, which
counts reclaimable page cache, plus free swap), what the process's cgroup (a container) still
allows, and what its address-space limit (``ulimit -v``) still allows. None where none of them
can be read (not Linux): then nothing is checked. Standard library only (the runtimes use it).
"""

from __future__ import annotations

import os

from compiler.errors import ArtifactError


def available_bytes() -> int | None:
    """The memory this process can still take (see the module's docstring), or None."""
    limits = [value for value in (_system_available(), _cgroup_available(), _address_space_available())
              if value is not None]
    return min(limits) if limits else None


def check_room(path: str, need: int, what: str) -> None:
    """``ArtifactError`` when loading ``path`` needs ``need`` bytes (``what``: for what) and the
    process cannot take that much more."""
    have = available_bytes()
    if have is not None and need > have:
        raise ArtifactError(f"{path}: loading it needs about {_size(need)} of memory ({what}), and this process "
                            f"can take {_size(have)} more: free memory, raise the limit, or load it on a "
                            "machine with more")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def _system_available() -> int | None:
    fields = _read_fields("/proc/meminfo")
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + fields.get("SwapFree", 0)


def _read_fields(path: str) -> dict[str, int]:
    """``Key:   123 kB`` lines as bytes by key."""
    fields: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return fields


def _cgroup_available() -> int | None:
    """cgroup v2: memory.max - memory.current of this process's group ("max": no limit)."""
    try:
        with open("/proc/self/cgroup") as f:
            group = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if group is None:
            return None
        folder = os.path.join("/sys/fs/cgroup", group.lstrip("/"))
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(folder, "memory.current")) as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError):
        return None


def _address_space_available() -> int | None:
    """``ulimit -v`` (RLIMIT_AS) less the address space this process already maps."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = _read_fields("/proc/self/status").get("VmSize")
    return None if used is None else max(soft - used, 0)


__all__ = ["available_bytes", "check_room"]
