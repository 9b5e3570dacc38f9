"""When a failed stage is worth running again: transient infrastructure errors only.

A stage is safe to rerun (its output is published as a new version only when complete, and a rerun
reuses what is current), so a lost connection to S3 or the tracking server, or a Ray node that went away,
is retried with backoff. Bad input, a bad config or a bug fails at once: running it again gives the same
error and only delays the message.
"""

from __future__ import annotations

from typing import Iterator

# Attempts after the first, and the waits before them (seconds): backoff with jitter (Prefect's).
RETRIES = 2
RETRY_DELAYS_S = [10, 60]
RETRY_JITTER = 0.5

# Errors that say the infrastructure failed, not the work: by class name, so this module needs none of
# the libraries that define them (botocore, urllib3, requests, Ray) to be importable.
_TRANSIENT_NAMES = {
    # botocore / boto3: the endpoint did not answer, or answered with a throttle or a 5xx
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteReadError",
    # requests / urllib3 / http.client (MLflow's client, HTTP sources)
    "ConnectionError", "Timeout", "ProtocolError", "RemoteDisconnected", "NewConnectionError",
    "MaxRetryError",
    # Ray: a node, worker or actor lost under the task
    "NodeDiedError", "WorkerCrashedError", "ActorDiedError", "ActorUnavailableError", "RaySystemError",
    "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError", "GetTimeoutError",
    "RayChannelTimeoutError",
}
# botocore ClientError codes that mean "try again later".
_TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                       "ServiceUnavailable", "RequestTimeTooSkewed", "500", "502", "503", "504"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        stack += [err.__cause__, err.__context__]
        cause = getattr(err, "cause", None)  # a RayTaskError's original exception
        if isinstance(cause, BaseException):
            stack.append(cause)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is an infrastructure failure that a rerun may not meet again.
    A user error (a config field, an input, a credential) is never transient, whatever it wraps."""
    from llm.errors import UserError

    errors = list(_chain(exc))
    if any(isinstance(e, UserError) for e in errors):
        return False
    for err in errors:
        names = {cls.__name__ for cls in type(err).__mro__}
        if names & _TRANSIENT_NAMES:
            return True
        if isinstance(err, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, TimeoutError)):
            return True
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", "")) \
            if isinstance(getattr(err, "response", None), dict) else ""
        if code in _TRANSIENT_S3_CODES:
            return True
    return False


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry the failed task run only for a transient error."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # the task's own exception, re-raised from its state
        return is_transient(exc)
    return False
