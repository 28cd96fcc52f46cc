"""`gate`: serve, demo, campaign administration, the audit log, and keys."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gate.admin_client import AdminClient
from gate.config import load_config
from gate.errors import ConfigError, GateError


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
    serve.add_argument("--core-port", type=int, help="the core system's confirm/release listener")
    serve.add_argument("--workers", type=int)
    serve.add_argument("--data-dir")

    demo = sub.add_parser(
        "demo", help="a seed incident replayed without the gate and with it (or: burst)"
    )
    demo.add_argument(
        "--scenario",
        default="special-deposit",
        help="special-deposit (default), slow-bureau, ipo-rush, failover, or burst "
        "(the gate alone under a burst)",
    )
    demo.add_argument("--customers", type=int, help="default: the scenario's (burst: 3000)")
    demo.add_argument("--rate", type=float, help="admission rate/s (default: the scenario's)")
    demo.add_argument("--full", action="store_true", help="the issue's full sizes (slow)")
    demo.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the nginx limit_req row (the scenarios run it when nginx is installed)",
    )
    demo.add_argument("--out", default="demo-out")

    # the two commands that talk to a running gate's admin API find it the same way
    admin_api = argparse.ArgumentParser(add_help=False)
    admin_api.add_argument("--config")
    admin_api.add_argument("--admin-url")
    admin_api.add_argument("--token")

    campaign = sub.add_parser(
        "campaign", parents=[admin_api], help="administer campaigns (through the admin API)"
    )
    csub = campaign.add_subparsers(dest="action", required=True)
    create = csub.add_parser("create", help="create from a JSON spec file ('-' = stdin)")
    create.add_argument("file")
    csub.add_parser("list")
    for name in ("show", "pause", "resume", "close", "stats"):
        csub.add_parser(name).add_argument("campaign")
    setp = csub.add_parser(
        "set",
        help="change rate, burst, max_active, pass_ttl, closes_at, or the adaptive rate's "
        "mode and bounds",
    )
    setp.add_argument("campaign")
    setp.add_argument("--rate", type=float)
    setp.add_argument(
        "--mode",
        choices=("auto", "manual"),
        help="adaptive rate: auto (follows the core's health) or manual (pinned)",
    )
    setp.add_argument("--rate-min", type=float, help="adaptive rate: the lowest it goes")
    setp.add_argument("--rate-max", type=float, help="adaptive rate: the highest it goes")
    setp.add_argument("--burst", type=int)
    setp.add_argument("--max-active", type=int)
    setp.add_argument("--pass-ttl", type=int)
    setp.add_argument("--closes-at")
    for name in ("block", "revoke"):
        p = csub.add_parser(name)
        p.add_argument("campaign")
        p.add_argument("--customer", required=True)
        p.add_argument("--reason", default="")

    audit = sub.add_parser(
        "audit", parents=[admin_api], help="the audit log: query, export, verify, dispute"
    )
    asub = audit.add_subparsers(dest="action", required=True)
    query = asub.add_parser("query", help="entries about a customer, seqs or a time range")
    query.add_argument("campaign")
    query.add_argument("--customer", help="the customer id (the gate computes its digest)")
    query.add_argument("--from-seq", type=int)
    query.add_argument("--to-seq", type=int)
    query.add_argument("--since", help="ISO 8601 time, e.g. 2026-12-01T00:00:00Z")
    query.add_argument("--until", help="ISO 8601 time")
    export = asub.add_parser("export", help="the whole log as JSON Lines, to stdout")
    export.add_argument("campaign")
    export.add_argument("--out", default="-", help="file to write (default: stdout)")
    verify = asub.add_parser(
        "verify",
        help="replay an export offline; exit 0 when it is clean, 1 naming the first problem",
    )
    verify.add_argument("file", help="the export ('-' = stdin)")
    verify.add_argument("--keys", help="the public keys (JSON of /.well-known/fairgate/keys)")
    sealing = verify.add_mutually_exclusive_group()
    sealing.add_argument(
        "--sealed",
        action="store_true",
        help="fail when no checkpoint covers some entries (the default; kept for scripts)",
    )
    sealing.add_argument(
        "--allow-unsealed",
        action="store_true",
        help="check entries no checkpoint covers too, reported NOT verified, instead of failing",
    )
    verify.add_argument(
        "--allow-seal-gaps",
        action="store_true",
        help="accept entries sealed later than the campaign's seal bound where the log records "
        "the gap (a sealer handover or a late sealer; never a stolen lease): reported, not failed",
    )
    verify.add_argument(
        "--checkpoint",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="checkpoints held from elsewhere (one, a JSON list, or JSON Lines a file): "
        "a truncation, rollback or fork against them fails",
    )
    verify.add_argument(
        "--receipt",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="receipts to check (a join's receipt or GET /q/{c}/receipt/{seq}'s answer, "
        "whose checkpoint is checked as a held one)",
    )
    dispute = asub.add_parser("dispute", help="a plain account of one customer, with proofs")
    dispute.add_argument("campaign")
    dispute.add_argument("--customer", required=True)
    dispute.add_argument("--keys", help="check the proofs with these public keys")

    witness = sub.add_parser(
        "witness", help="witness a gate's checkpoints with your own key (docs/audit-format.md)"
    )
    wsub = witness.add_subparsers(dest="action", required=True)
    keygen = wsub.add_parser("keygen", help="write a new witness key; prints its vkey")
    keygen.add_argument("--out", required=True, help="the key file to write (mode 0600)")
    keygen.add_argument("--name", help="the witness's name (default: witness.<host name>)")
    wrun = wsub.add_parser("run", help="check and cosign the gate's latest checkpoints")
    wrun.add_argument("--key", required=True, help="the witness key file")
    wrun.add_argument("--state", required=True, help="directory for what the witness holds")
    wrun.add_argument("--gate", required=True, help="the gate's public URL")
    wrun.add_argument("--campaign", action="append", required=True, help="repeat for more")
    wrun.add_argument("--keys", help="pin the gate's public keys (JSON) instead of fetching")
    when = wrun.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="one round, then exit")
    when.add_argument("--interval", type=float, default=10.0, help="seconds between rounds")

    keys = sub.add_parser("keys", help="signing keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    gen = ksub.add_parser("generate", help="write a new signing key file")
    gen.add_argument("--out", default="-", help="file to write (default: stdout)")
    digest = ksub.add_parser(
        "generate-digest",
        help="write a customer-digest key file, kept apart from the signing keys; on an "
        "existing file, add a new current key (new campaigns use it, older ones keep theirs)",
    )
    digest.add_argument("--out", default="-", help="file to write (default: stdout)")
    return parser


def _digest_document(out: str) -> dict[str, Any]:
    """A new digest key file, or the file at `out` with a new current key added."""
    from gate.signing import generate_digest_document, parse_digest_keys

    path = Path(out)
    if out == "-" or not path.exists():
        return generate_digest_document()
    previous = _read_json(out, "digest key file")
    try:
        parse_digest_keys(previous, out)
    except ConfigError as exc:
        raise GateError(str(exc), code="bad_keys") from None
    return generate_digest_document(previous)


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
        adaptive = {
            key: value
            for key, value in (
                ("mode", args.mode),
                ("rate_min", args.rate_min),
                ("rate_max", args.rate_max),
            )
            if value is not None
        }
        if adaptive:
            patch["adaptive"] = adaptive
        if not patch:
            raise GateError(
                "nothing to set: give --rate, --burst, --max-active, --pass-ttl, --closes-at, "
                "--mode, --rate-min or --rate-max",
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


def _read_json(path: str, what: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return json.loads(text)
    except OSError as exc:
        raise GateError(f"{what} {path}: {exc.strerror}", code="bad_file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateError(f"{what} {path}: not JSON ({exc})", code="bad_file") from None


def _read_checkpoints(path: str) -> list[dict[str, Any]]:
    from gate.audit.checkpoints import read_checkpoints

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise GateError(f"checkpoint file {path}: {exc.strerror}", code="bad_file") from None
    except UnicodeDecodeError:
        raise GateError(f"checkpoint file {path}: not text", code="bad_file") from None
    try:
        return read_checkpoints(text)
    except ValueError as exc:
        raise GateError(f"checkpoint file {path}: {exc}", code="bad_file") from None


def _audit_verify(args: argparse.Namespace) -> int:
    from gate.audit.format import load_public_keys
    from gate.audit.report import VerificationFailed
    from gate.audit.verify import verify_lines

    keys = _read_json(args.keys, "keys file") if args.keys else None
    if keys is not None:
        try:
            load_public_keys(keys)
        except ValueError as exc:
            raise GateError(f"keys file {args.keys}: {exc}", code="bad_keys") from None
    receipts = [(path, _read_json(path, "receipt")) for path in args.receipt]
    held = [
        (path if len(found) == 1 else f"{path}#{number}", checkpoint)
        for path in args.checkpoint
        for found in [_read_checkpoints(path)]
        for number, checkpoint in enumerate(found, start=1)
    ]
    try:
        with (
            open(sys.stdin.fileno(), "rb", closefd=False)
            if args.file == "-"
            else open(args.file, "rb") as fh
        ):
            report = verify_lines(
                fh,
                keys,
                keys_from=f"from {args.keys}" if args.keys else "",
                require_sealed=not args.allow_unsealed,
                allow_seal_gaps=args.allow_seal_gaps,
                receipts=receipts,
                checkpoints=held,
            )
    except OSError as exc:
        raise GateError(f"{args.file}: {exc.strerror}", code="bad_file") from None
    except VerificationFailed as exc:
        print(f"FAILED {exc.failure.describe()}")
        print(f"gate: error: verify_failed: {exc.failure.describe()}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


def _audit_command(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return _audit_verify(args)  # offline: no configuration, no gate
    config = load_config(args.config, admin_url=args.admin_url, admin_token=args.token)
    client = AdminClient(config.admin_url, config.admin_token)
    base = f"/admin/campaigns/{urllib.parse.quote(args.campaign, safe='')}"
    if args.action == "export":
        if args.out == "-":
            client.stream(f"{base}/audit/export", sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            tmp = Path(args.out + ".part")
            try:
                with open(tmp, "wb") as fh:
                    size = client.stream(f"{base}/audit/export", fh)
                tmp.replace(args.out)
            except OSError as exc:
                raise GateError(f"{args.out}: {exc.strerror}", code="bad_file") from None
            finally:
                tmp.unlink(missing_ok=True)
            print(f"wrote {args.out} ({size} bytes)", file=sys.stderr)
        return 0
    if args.action == "query":
        params = {
            name: str(value)
            for name, value in (
                ("customer", args.customer),
                ("from_seq", args.from_seq),
                ("to_seq", args.to_seq),
                ("since", args.since),
                ("until", args.until),
            )
            if value is not None
        }
        result: dict[str, Any] = {}
        entries: list[Any] = []
        after = 0
        while True:  # every page
            page = client.call(
                "GET", f"{base}/audit?{urllib.parse.urlencode({**params, 'after': after})}"
            )
            entries += page["entries"]
            result = page
            if page.get("next_after") is None:
                break
            after = page["next_after"]
        result.update(entries=entries, count=len(entries), next_after=None)
        _print(result)
        return 0
    from gate.audit.dispute import check_account, render_text
    from gate.audit.format import load_public_keys

    account = client.call(
        "GET", f"{base}/audit/dispute?{urllib.parse.urlencode({'customer': args.customer})}"
    )
    document = _read_json(args.keys, "keys file") if args.keys else account.get("keys")
    try:
        public_keys = load_public_keys(document)
    except ValueError as exc:
        raise GateError(f"public keys: {exc}", code="bad_keys") from None
    checks = check_account(account, public_keys)
    sys.stdout.write(render_text(account, checks))
    return 0 if all(ok for _, ok in checks) else 1


def _witness_command(args: argparse.Namespace) -> int:
    from gate.audit import witness

    if args.action == "keygen":
        import socket

        key = witness.generate_key(args.name or f"witness.{socket.gethostname()}")
        out = Path(args.out)
        if out.exists():
            raise GateError(f"{out} exists; not overwriting a key", code="bad_file")
        try:
            witness.write_key(out, key)
        except OSError as exc:
            raise GateError(f"{out}: {exc.strerror}", code="bad_file") from None
        print(key.verifier.vkey())
        print(
            f"wrote {out} (mode 0600); give the gate the line above (witness_keys)", file=sys.stderr
        )
        return 0
    return witness.run(
        Path(args.key),
        Path(args.state),
        args.gate,
        args.campaign,
        once=args.once,
        interval_s=args.interval,
        keys_path=Path(args.keys) if args.keys else None,
    )


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
                core_port=args.core_port,
                workers=args.workers,
                data_dir=args.data_dir,
            )
            return serve(config)
        if args.command == "demo":
            from gate.demo.run import run_demo

            return run_demo(
                scenario=args.scenario,
                customers=args.customers,
                rate=args.rate,
                out=Path(args.out),
                full=args.full,
                baseline=not args.no_baseline,
            )
        if args.command == "campaign":
            return _campaign_command(args)
        if args.command == "audit":
            return _audit_command(args)
        if args.command == "witness":
            return _witness_command(args)
        if args.command == "keys":
            from gate.signing import generate_keys_document, write_keys

            if args.action == "generate-digest":
                document = _digest_document(args.out)
            else:
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
