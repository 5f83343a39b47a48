"""The sandbox runtime: runs containers' contents as host processes in namespaces (see ``runtime``)."""

from moat.runtime.sandbox.runtime import SandboxRuntime

__all__ = ["SandboxRuntime"]
