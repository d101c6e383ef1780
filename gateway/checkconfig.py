"""``edge-gateway check-config``: validate a folder and summarise what it would run."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.config import ConfigError, load_config

__all__ = ["check_config"]

EXIT_OK = 0
EXIT_INVALID = 2


def check_config(directory: Path) -> int:
    """Print a summary and return 0, or print every issue to stderr and return 2."""
    try:
        config = load_config(directory)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) in {directory}", file=sys.stderr)
        return EXIT_INVALID

    main = config.main
    identity = main.gateway
    mqtt = main.mqtt
    print(f"configuration {directory}: valid")
    print(f"gateway {identity.site}/{identity.id}, store {config.store_path}")
    broker = f"{mqtt.host}:{mqtt.port}" if mqtt.enabled else "disabled"
    tls = ", TLS" if mqtt.tls.enabled else ""
    print(f"mqtt {broker} (MQTT {mqtt.protocol}{tls}), prefix {mqtt.topic_prefix!r}")
    print()
    print(f"{'tool':<20} {'driver':<10} {'tags':>6} {'groups':>6} {'readings/s':>12}")
    total_tags = 0
    total_rate = 0.0
    for tool in config.tools:
        rate = tool.readings_per_s if tool.enabled else 0.0
        state = "" if tool.enabled else "  (disabled)"
        print(
            f"{tool.id:<20} {tool.kind:<10} {len(tool.tags):>6} "
            f"{len(tool.poll_groups):>6} {rate:>12.1f}{state}"
        )
        for group in tool.poll_groups:
            every = f"every {group.interval_s:g} s"
            print(f"  group {group.name}: {len(group.tags)} tags {every}")
        total_tags += len(tool.tags)
        total_rate += rate
    print()
    print(
        f"{len(config.tools)} tool(s), {total_tags} tag(s), "
        f"estimated {total_rate:.1f} readings/s"
    )
    return EXIT_OK
