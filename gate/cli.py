"""`gate`: serve, demo, campaign administration and keys."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gate.admin_client import AdminClient
from gate.config import load_config
from gate.errors import GateError


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gate", description="fairgate: a fair admission gate")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gate")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--redis", help="Redis URL; none = embedded Redis")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--admin-port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--data-dir")

    demo = sub.add_parser("demo", help="embedded Redis + gate + a burst of customers")
    demo.add_argument("--scenario", default="burst")
    demo.add_argument("--customers", type=int, default=3000)
    demo.add_argument("--rate", type=float, default=500.0)
    demo.add_argument("--out", default="demo-out")

    campaign = sub.add_parser("campaign", help="administer campaigns (through the admin API)")
    campaign.add_argument("--config")
    campaign.add_argument("--admin-url")
    campaign.add_argument("--token")
    csub = campaign.add_subparsers(dest="action", required=True)
    create = csub.add_parser("create", help="create from a JSON spec file ('-' = stdin)")
    create.add_argument("file")
    csub.add_parser("list")
    for name in ("show", "pause", "resume", "close", "stats"):
        csub.add_parser(name).add_argument("campaign")
    setp = csub.add_parser("set", help="change rate, burst, max_active, pass_ttl or closes_at")
    setp.add_argument("campaign")
    setp.add_argument("--rate", type=float)
    setp.add_argument("--burst", type=int)
    setp.add_argument("--max-active", type=int)
    setp.add_argument("--pass-ttl", type=int)
    setp.add_argument("--closes-at")
    for name in ("block", "revoke"):
        p = csub.add_parser(name)
        p.add_argument("campaign")
        p.add_argument("--customer", required=True)
        p.add_argument("--reason", default="")

    keys = sub.add_parser("keys", help="signing keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    gen = ksub.add_parser("generate", help="write a new key file")
    gen.add_argument("--out", default="-", help="file to write (default: stdout)")
    return parser


def _campaign_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, admin_url=args.admin_url, admin_token=args.token)
    client = AdminClient(config.admin_url, config.admin_token)
    base = "/admin/campaigns"
    action = args.action
    if action == "create":
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            spec = json.loads(text)
        except OSError as exc:
            raise GateError(f"{args.file}: {exc.strerror}", code="bad_file") from None
        except json.JSONDecodeError as exc:
            raise GateError(f"{args.file}: not JSON ({exc})", code="bad_file") from None
        _print(client.call("POST", base, spec))
    elif action == "list":
        _print(client.call("GET", base))
    elif action == "show":
        _print(client.call("GET", f"{base}/{args.campaign}"))
    elif action == "stats":
        _print(client.call("GET", f"{base}/{args.campaign}/stats"))
    elif action in ("pause", "resume", "close"):
        _print(client.call("POST", f"{base}/{args.campaign}/{action}", {}))
    elif action == "set":
        patch = {
            key: value
            for key, value in (
                ("rate_per_s", args.rate),
                ("burst", args.burst),
                ("max_active", args.max_active),
                ("pass_ttl_s", args.pass_ttl),
                ("closes_at", args.closes_at),
            )
            if value is not None
        }
        if not patch:
            raise GateError(
                "nothing to set: give --rate, --burst, --max-active, --pass-ttl or --closes-at",
                code="usage",
            )
        _print(client.call("PATCH", f"{base}/{args.campaign}", patch))
    elif action in ("block", "revoke"):
        _print(
            client.call(
                "POST",
                f"{base}/{args.campaign}/{action}",
                {"customer": args.customer, "reason": args.reason},
            )
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from gate.server import serve

            config = load_config(
                args.config,
                redis_url=args.redis,
                host=args.host,
                port=args.port,
                admin_port=args.admin_port,
                workers=args.workers,
                data_dir=args.data_dir,
            )
            return serve(config)
        if args.command == "demo":
            from gate.demo.run import run_demo

            return run_demo(
                scenario=args.scenario, customers=args.customers, rate=args.rate, out=Path(args.out)
            )
        if args.command == "campaign":
            return _campaign_command(args)
        if args.command == "keys":
            from gate.signing import generate_keys_document, write_keys

            document = generate_keys_document()
            if args.out == "-":
                _print(document)
            else:
                write_keys(Path(args.out), document)
                print(f"wrote {args.out} (mode 0600)", file=sys.stderr)
            return 0
    except GateError as exc:
        print(f"gate: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
