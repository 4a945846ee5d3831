"""The least-privilege Redis ACL for TaskForge: exactly the commands its clients, scripts and
workers send, on the keys of one prefix and the event channels of that prefix.

``acl_rules(prefix)`` is what docs/deployment.md prints and the test suite runs as (it drives
every flow as a user with these rules and checks that the server logged no denial), so the
documented line cannot drift from what the code needs.
"""

from __future__ import annotations

import re

__all__ = [
    "CLUSTER_COMMANDS",
    "COMMANDS",
    "OPTIONAL_COMMANDS",
    "RECENT_COMMANDS",
    "acl_rules",
    "acl_user_line",
    "explain_denial",
]

COMMANDS: tuple[str, ...] = (
    # Scripts: every state transition (EVAL re-caches a script after a restart or failover).
    "evalsha",
    "eval",
    # What the scripts call (the ACL is checked for commands inside scripts too).
    "del",
    "exists",
    "get",
    "set",
    "hdel",
    "hget",
    "hgetall",
    "hincrby",
    "hrandfield",
    "hmget",
    "hset",
    "pexpire",
    "persist",
    "publish",
    "rpush",
    "zadd",
    "zcard",
    "zcount",
    "zpopmin",
    "zrange",
    "zrangebyscore",
    "zrem",
    "zremrangebyscore",
    "zrevrange",
    "zscore",
    # Registries and the inspector's reads.
    "sadd",
    "smembers",
    # Waiting: workers for work, producers for results.
    "bzmpop",
    "bzpopmin",
    "blpop",
    # Job events (the dashboard, `taskforge events`).
    "subscribe",
    "psubscribe",
    "unsubscribe",
    "punsubscribe",
    # Server facts and durability.
    "info",
    "time",
    "ping",
    "wait",
)
CLUSTER_COMMANDS: tuple[str, ...] = ("cluster|slots", "cluster|shards", "cluster|nodes", "command")
"""Extra commands that redis-py's cluster client needs to learn the topology."""
RECENT_COMMANDS: tuple[str, ...] = ("waitaof", "client|setinfo")
"""Commands of Redis >= 7.2 and Valkey (older servers reject rules that name them): WAITAOF for
wait_aof, and CLIENT SETINFO, with which redis-py labels its connections."""
OPTIONAL_COMMANDS: dict[str, str] = {
    "config|get": "the maxmemory-policy check at worker start (it also reveals passwords: the"
    " check is skipped without it)",
}


def acl_rules(prefix: str = "taskforge", *, cluster: bool = False, recent: bool = False) -> str:
    """ACL rules (without the user name and password) for TaskForge on ``prefix``; ``cluster``
    for a Redis Cluster, ``recent`` for Redis >= 7.2 or Valkey."""
    commands = [
        *COMMANDS,
        *(CLUSTER_COMMANDS if cluster else ()),
        *(RECENT_COMMANDS if recent else ()),
    ]
    return " ".join(
        [
            "resetkeys",
            f"~{prefix}:*",
            "resetchannels",
            f"&{prefix}:events:*",
            "-@all",
            *(f"+{name}" for name in commands),
        ]
    )


def acl_user_line(
    user: str = "taskforge",
    password: str = "CHANGE-ME",
    prefix: str = "taskforge",
    *,
    cluster: bool = False,
    recent: bool = False,
) -> str:
    """A complete ``user ...`` line for redis.conf or an ACL file (``ACL SETUSER`` takes the
    same rules after the name)."""
    return f"user {user} on >{password} {acl_rules(prefix, cluster=cluster, recent=recent)}"


_COMMAND_RE = re.compile(r"permissions to run the '([\w|]+)' command")
_SCRIPT_RE = re.compile(r"script: ([0-9a-f]{40})?,? ?on @user_script:(\d+)")
_CALL_RE = re.compile(r"redis\.call\('(\w+)'")
_DENIAL_MARKS = (
    "NOPERM",
    "no permissions",
    "No permissions",
    "can't run this command",
    "can't publish to the channel",
    "ACL failure in script",
)


def _script_command(sha: str | None, line: int) -> str | None:
    """The command a TaskForge script calls on ``line`` (Redis names the script by its SHA)."""
    from .scripts import SCRIPT_NAMES, load_script

    for name in SCRIPT_NAMES:
        script = load_script(name)
        if sha is not None and script.sha != sha:
            continue
        lines = script.source.splitlines()
        if 0 < line <= len(lines) and (match := _CALL_RE.search(lines[line - 1])):
            return match.group(1).lower()
    return None


def explain_denial(text: str) -> str | None:
    """A message naming the missing permission, for a server's ACL refusal; None when ``text``
    is not one. Redis and Valkey word these differently, and inside scripts Redis does not name
    the command: the script's SHA and line do."""
    if not any(mark in text for mark in _DENIAL_MARKS):
        return None
    if "access one of the keys" in text or "access a key" in text:
        missing = (
            "access TaskForge's keys: give it the key pattern ~<prefix>:* (the prefix is"
            " TASKFORGE_PREFIX, 'taskforge' by default)"
        )
    elif "to the channel" in text or "access a channel" in text:
        missing = (
            "publish job events: give it the channel pattern &<prefix>:events:* (or turn events"
            " off with publish_events=False)"
        )
    else:
        command = None
        if match := _COMMAND_RE.search(text):
            command = match.group(1).lower()
        elif match := _SCRIPT_RE.search(text):
            command = _script_command(match.group(1), int(match.group(2)))
        where = " (inside a TaskForge script)" if "script" in text else ""
        if command is None:
            missing = f"run a command TaskForge needs{where}"
        else:
            missing = f"run {command.upper()}{where}: add +{command} to its ACL rules"
    return (
        f"the Redis user may not {missing}. The complete rules are in docs/deployment.md"
        f" (taskforge.redis.acl.acl_user_line). Server said: {text}"
    )
