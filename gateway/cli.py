"""The ``edge-gateway`` command: run, check-config, status, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError, load_config
from gateway.config.models import GatewayConfig

__all__ = ["main"]

DEFAULT_CONFIG_DIR = Path("/etc/edge-gateway")
CONFIG_ENV = "EDGE_GATEWAY_CONFIG"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _default_config_dir() -> Path:
    return Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_DIR))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-gateway",
        description="Poll tools, score readings at the edge, forward over MQTT.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", type=Path, default=None, help="configuration folder")

    check = commands.add_parser("check-config", help="validate a configuration folder")
    check.add_argument("dir", type=Path, nargs="?", default=None)

    status = commands.add_parser("status", help="show the gateway's state")
    status.add_argument(
        "--config", type=Path, default=None, help="configuration folder"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 2) until Ctrl-C",
    )

    fit = commands.add_parser("fit", help="fit a model on normal data, write its file")
    fit.add_argument("--kind", required=True, help="model kind, such as pca")
    fit.add_argument(
        "--params", default=None, help='parameters as JSON: {"variance": 0.9}'
    )
    fit.add_argument(
        "--csv", type=Path, default=None, help="timestamp,tag1,tag2,... file"
    )
    fit.add_argument("--rows", type=int, default=None, help="use the first N CSV rows")
    fit.add_argument("--config", type=Path, default=None, help="configuration folder")
    fit.add_argument("--tool", default=None, help="tool id (with --config)")
    fit.add_argument("--group", default=None, help="poll group (with --config)")
    fit.add_argument(
        "--start", default=None, help="ISO time, inclusive (with --config)"
    )
    fit.add_argument("--end", default=None, help="ISO time, exclusive (with --config)")
    fit.add_argument("--out", type=Path, required=True, help="model file to write")

    evaluate = commands.add_parser(
        "evaluate", help="score a detector stack on labeled data (SKAB or NAB)"
    )
    evaluate.add_argument("data", type=Path, help="folder of labeled data")
    evaluate.add_argument("--format", choices=("skab", "nab"), default=None)
    evaluate.add_argument(
        "--stack", type=Path, default=None, help="detector stack TOML"
    )
    evaluate.add_argument(
        "--model", type=Path, default=None, help="a fitted model file to score with"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    cert = commands.add_parser(
        "opcua-cert", help="create the gateway's OPC UA certificate, show the steps"
    )
    cert.add_argument("--config", type=Path, default=None, help="configuration folder")
    cert.add_argument(
        "--pki", type=Path, default=None, help="PKI folder (default: the daemon's)"
    )
    cert.add_argument("--uri", default=None, help="application URI to certify")
    cert.add_argument("--force", action="store_true", help="replace an existing pair")

    demo = commands.add_parser("demo", help="run simulated tools end to end over MQTT")
    demo.add_argument(
        "--duration",
        type=float,
        default=45.0,
        help="seconds to run (0 runs until Ctrl-C); default 45",
    )
    demo.add_argument("--config", type=Path, default=None, help="demo configuration")
    return parser


def _load(directory: Path | None) -> GatewayConfig:
    return load_config(directory or _default_config_dir())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-gateway`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            from gateway.checkconfig import check_config

            return check_config(args.dir or _default_config_dir())
        if args.command == "run":
            return _run(_load(args.config))
        if args.command == "status":
            from gateway.status import show_status

            return show_status(
                _load(args.config), as_json=args.json, watch_s=args.watch
            )
        if args.command == "fit":
            from gateway.fit import main as fit_main

            return fit_main(args)
        if args.command == "evaluate":
            from gateway.evaluate import main as evaluate_main

            return evaluate_main(
                args.data, args.format, args.stack, args.model, args.json
            )
        if args.command == "opcua-cert":
            from gateway.opcuacert import opcua_cert

            config = None if args.pki else _load(args.config)
            return opcua_cert(config, args.pki, args.uri, args.force)
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(args.config, args.duration)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_FAILURE


def _run(config: GatewayConfig) -> int:
    import structlog

    from gateway.daemon import run_gateway
    from gateway.logs import configure_logging
    from gateway.store import StoreError

    configure_logging(config.main.logging)
    try:
        asyncio.run(run_gateway(config))
    except StoreError as exc:
        structlog.get_logger(__name__).error("store_unusable", error=str(exc))
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
