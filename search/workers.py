"""Ray enters here and nowhere else: start a local Ray or join a cluster, share read-only state
once through the object store, and run plain functions as tasks."""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

# A local Ray listens on this machine only (127.0.0.1): Ray's own switch, read when ray is
# imported. Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 to have it listen on the node's address instead.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402

import spaces  # noqa: E402

import search  # noqa: E402
from search.errors import UserError  # noqa: E402


class TrialFailed(Exception):
    """A task did not return: it raised, or its worker process died."""


_AUTH_LOG = logging.getLogger("ray._private.authentication.authentication_token_setup")


def _token_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


@dataclass(frozen=True)
class Returned:
    """The last item a streaming task yields: what its generator function returned."""

    value: Any


@ray.remote(max_retries=0)
def _task(threads: int, fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    torch.set_num_threads(threads)
    return fn(*args), ray.get_runtime_context().get_node_id()


@ray.remote(max_retries=0)
def _streaming_task(threads: int, fn: Callable[..., Generator[Any, None, Any]], *args: Any) -> Generator:
    """A Ray streaming generator: what `fn` yields reaches the driver as it is yielded."""
    torch.set_num_threads(threads)
    result = yield from fn(*args)
    yield Returned(result)


class Workers:
    """A context manager around a Ray session. Trials each take `cpus_per_trial` CPUs (and
    `gpus_per_trial` GPUs), so concurrency follows the cluster's resources."""

    def __init__(self, address: str | None, num_cpus: int | None, cpus_per_trial: int, gpus_per_trial: float,
                 max_retries: int = 0):
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        self.max_retries = max_retries  # Ray re-runs a task whose worker process died (killed, OOM, segfault)

    def __enter__(self) -> Workers:
        if self.address is None and not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            # Ray's token auth would otherwise generate a token file in the home folder.
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        elif self.address is not None and os.environ.get("RAY_AUTH_TOKEN"):
            # a driver joining a cluster uses a given token only in token mode (else "Failed to connect")
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        runtime_env = None
        if self.address is not None:  # the cluster's workers get this project's code from here
            runtime_env = {"py_modules": [str(Path(search.__file__).parent), str(Path(spaces.__file__).parent)]}
        self._started = not ray.is_initialized()
        if self._started:
            try:
                if self.address is None:  # Ray's notice that it turned token auth on: the choice is ours (above)
                    _AUTH_LOG.addFilter(_token_auth_notice)
                ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                         include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                         runtime_env=runtime_env)
            except (ConnectionError, ValueError) as e:  # no cluster at the address, a malformed address
                if self.address is None:
                    raise
                raise UserError(f"ray.address: cannot join a Ray cluster at {self.address!r} "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            finally:
                _AUTH_LOG.removeFilter(_token_auth_notice)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            ray.shutdown()

    def _nodes(self) -> list[dict[str, float]]:
        """The resources of each alive node that can hold a trial (a task never spans nodes)."""
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        return [r for r in nodes if r.get("CPU", 0) >= self.cpus_per_trial and r.get("GPU", 0) >= self.gpus_per_trial]

    @property
    def slots(self) -> int:
        """How many trials can run at once: counted node by node, since a trial's CPUs (and GPUs)
        must all be on one node."""
        def fits(r: dict[str, float]) -> int:
            n = int(r["CPU"] // self.cpus_per_trial)
            return min(n, int(r["GPU"] // self.gpus_per_trial)) if self.gpus_per_trial else n
        return max(sum(fits(r) for r in self._nodes()), 1)

    @property
    def cpus(self) -> int:
        """CPUs for one big task (the supernet): the largest node's. The cluster's total could
        never be scheduled once it spans nodes."""
        return int(max((r["CPU"] for r in self._nodes()), default=self.cpus_per_trial))

    def share(self, value: Any) -> ray.ObjectRef:
        """Put read-only state in the object store once; tasks receive it without copies."""
        return ray.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any, cpus: int | None = None) -> ray.ObjectRef:
        cpus = cpus or self.cpus_per_trial
        return _task.options(num_cpus=cpus, num_gpus=self.gpus_per_trial,
                             max_retries=self.max_retries).remote(cpus, fn, *args)

    @staticmethod
    def cancel(refs: list[ray.ObjectRef], settle: float = 10.0) -> None:
        """Stop tasks now (their worker processes are killed), then wait up to `settle` seconds for Ray to
        record them as cancelled: a shutdown while a forced cancel is still pending can crash Ray's core
        worker (a RAY_CHECK in TaskManager::CompletePendingTask, ray-project/ray#54260)."""
        for ref in refs:
            ray.cancel(ref, force=True)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=settle)

    def run(self, fn: Callable[..., Any], *args: Any, cpus: int | None = None) -> Any:
        return self.result(self.submit(fn, *args, cpus=cpus))[0]

    def stream(self, fn: Callable[..., Generator[Any, None, Any]], *args: Any, report: Callable[[Any], None],
               cpus: int | None = None) -> Any:
        """`run` for a generator function: each item it yields goes to `report` as it comes (progress
        from a worker, whose own output the driver does not show); returns what it returns."""
        cpus = cpus or self.cpus_per_trial
        for ref in _streaming_task.options(num_cpus=cpus, num_gpus=self.gpus_per_trial,
                                           max_retries=self.max_retries).remote(cpus, fn, *args):
            item = self.result(ref)
            if isinstance(item, Returned):
                return item.value
            report(item)
        raise TrialFailed(f"{getattr(fn, '__name__', fn)} ended without returning")

    @staticmethod
    def wait(refs: list[ray.ObjectRef], timeout: float | None = None) -> list[ray.ObjectRef]:
        """The finished ones among `refs` (at least one unless the timeout passes)."""
        return ray.wait(refs, num_returns=1, timeout=timeout)[0] if refs else []

    @staticmethod
    def result(ref: ray.ObjectRef) -> Any:
        """What a finished task (or a streaming task's item) holds: (value, node id) for `submit`'s
        tasks; or TrialFailed with the cause."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            raise TrialFailed(f"{type(e.cause).__name__}: {e.cause}") from e
        except ray.exceptions.RayError as e:  # the worker process died, the node was lost, ...
            raise TrialFailed(f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
