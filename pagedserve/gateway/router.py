"""Chooses the executor for a new request: the healthy one with the fewest active requests."""

from __future__ import annotations

from pagedserve.gateway.executor_link import ExecutorLink


class NoExecutorError(RuntimeError):
    """No executor is reachable; maps to UNAVAILABLE."""


class Router:
    def __init__(self, links: list[ExecutorLink]):
        self.links = links

    def pick(self) -> ExecutorLink:
        """The least loaded healthy link; raises NoExecutorError when none is healthy."""
        healthy = [link for link in self.links if link.healthy]
        if not healthy:
            raise NoExecutorError("no executor is reachable")
        return min(healthy, key=lambda link: link.num_active)
