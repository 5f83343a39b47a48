"""The host cache of provisioned items (ollama models): its directories, locks, index and layouts."""

from moat.cache.host import CacheBusy, HostCache, LockAborted, LockTimeout

__all__ = ["CacheBusy", "HostCache", "LockAborted", "LockTimeout"]
