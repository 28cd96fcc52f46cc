"""`gate`: serve, demo, campaign administration, the audit log, and keys."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import textwrap
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gate.admin_client import AdminClient
from gate.cli_output import OUTPUTS, render
from gate.config import load_config
from gate.errors import ConfigError, GateError
from gate.logs import FORMATS


def _print(data: Any, output: str = "json") -> None:
    print(render(data, output))


def _confirm(args: argparse.Namespace, question: str) -> None:
    """Go on only with --yes, or a `y` typed at a terminal: what cannot be undone is never
    done by a script that forgot to say so."""
    if getattr(args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise GateError(
            f"{question}: this cannot be undone; add --yes to go ahead", code="confirmation_needed"
        )
    print(f"{question}? This cannot be undone. [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise GateError(f"{question}: not confirmed, nothing done", code="confirmation_needed")


EXIT_CODES = """\
exit codes:
  0    done (also when the reader of the output went away: `gate ... | head -1`)
  1    a check failed: `audit verify` found a bad entry, `audit dispute` a proof that
       does not hold, `demo` a result not OK; `serve` stopped because its embedded Redis
       could not be kept running; `witness run` could not complete a round
  2    a usage error, or a clear refusal: one line `gate: error: CODE: message` on stderr
       (a bad option or configuration, an error answer from the admin API, a data dir
       or port in use, a confirmation not given)
  3    `witness run`: the gate signed two different logs (equivocation; evidence written)
  130  interrupted (Ctrl-C)
"""


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    examples: str = "",
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, its description and its examples."""
    epilog = "examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  ")
    description = kwargs.pop("description", summary[:1].upper() + summary[1:] + ".")
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 88),
        epilog=epilog if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default="json",
        help="json (default: the admin API's answer, for scripts) or table (for reading)",
    )


def _yes_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help=f"{what} without asking (needed when stdin is not a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gate",
        description="fairgate: a fair admission gate for flash promotions.\n"
        "`gate COMMAND --help` shows each command's options and examples.",
        epilog=EXIT_CODES + "\ndocs/cli.md has every command with examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"gate (fairgate) {_version()}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(
        sub,
        "serve",
        "run the gate (its public, admin and core listeners)",
        """
        gate serve                                   # embedded Redis in ./.gate-data
        gate serve --config /etc/fairgate/fairgate.toml --workers 4
        gate serve --redis redis://10.0.0.5:6379/0 --host 0.0.0.0 --port 8080 \\
                   --admin-port 8081 --core-port 8082
        gate serve --data-dir /var/lib/fairgate --log-format json
        """,
        description="Run the gate. Without --redis (or GATE_REDIS_URL) it starts an "
        "embedded Redis with AOF in the data dir, which it locks: a second `gate serve` "
        "on the same data dir stops with data_dir_in_use. A listener port in use stops it "
        "with port_in_use. Logs go to stderr, one event per line.",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file ([gate] keys)")
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="Redis URL (redis://, rediss://, redis+sentinel://, "
        "redis+cluster://); none: the embedded Redis",
    )
    serve.add_argument("--host", help="the public listener's address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="the public listener's port (default 8080)")
    serve.add_argument(
        "--admin-port", type=int, metavar="PORT", help="the admin listener's port (default 8081)"
    )
    serve.add_argument(
        "--core-port",
        type=int,
        metavar="PORT",
        help="the core system's confirm/release listener (default 8082)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes sharing the ports (SO_REUSEPORT; default 1)",
    )
    serve.add_argument(
        "--data-dir", metavar="DIR", help="the embedded Redis's AOF, keys (default ./.gate-data)"
    )
    serve.add_argument(
        "--log-format",
        choices=FORMATS,
        help="logfmt (default: key=value, quoted where needed) or json, one event per line",
    )

    demo = _command(
        sub,
        "demo",
        "a seed incident replayed without the gate and with it (or: burst)",
        """
        gate demo                                    # special-deposit, ~30 s
        gate demo --scenario slow-bureau --no-baseline --out /tmp/demo
        gate demo --scenario burst --customers 5000 --rate 800
        gate demo --scenario ipo-rush --full         # the incident's sizes (slow)
        """,
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
    demo.add_argument(
        "--out", default="demo-out", metavar="DIR", help="where the report goes (default demo-out)"
    )

    # the two commands that talk to a running gate's admin API find it the same way
    admin_api = argparse.ArgumentParser(add_help=False)
    _admin_options(admin_api)

    campaign = _command(
        sub,
        "campaign",
        "administer campaigns (through the admin API)",
        parents=[admin_api],
        description="Administer campaigns through a running gate's admin API "
        "(GATE_ADMIN_URL, GATE_ADMIN_TOKEN, or --admin-url, --token, --config before or "
        "after the action).",
    )
    campaign.epilog = (
        "examples:\n  gate campaign list -o table\n"
        "  gate campaign stats deposit-5pct --admin-url http://10.0.0.5:8081\n"
        '  gate campaign --config /etc/fairgate/fairgate.toml --token "$OPS_TOKEN" list'
    )
    csub = campaign.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _command(
        csub,
        "create",
        "create a campaign from a JSON spec file ('-' = stdin)",
        """
        gate campaign create examples/deposit.json
        cat deposit.json | gate campaign create - --output table
        """,
    )
    create.add_argument("file", help="the campaign spec (JSON; README 'Campaign spec')")
    _output_option(create)
    listing = _command(
        csub,
        "list",
        "list the campaigns with their state and counts",
        """
        gate campaign list
        gate campaign list --output table
        """,
    )
    _output_option(listing)
    for name, summary, example in (
        ("show", "a campaign's spec, state and failover report", "show deposit-5pct -o table"),
        ("pause", "pause admission; `resume` undoes it", "pause deposit-5pct"),
        ("resume", "admit again after a pause or a failover hold", "resume deposit-5pct"),
        ("stats", "a campaign's counts: joined, waiting, admitted, quota", "stats deposit-5pct"),
    ):
        action = _command(
            csub,
            name,
            summary,
            f"gate campaign {example}\ngate campaign {name} deposit-5pct --output "
            + ("json" if "-o table" in example else "table"),
        )
        action.add_argument("campaign", help="the campaign id")
        _output_option(action)
    _watch_options(csub.choices["stats"])
    close = _command(
        csub,
        "close",
        "close a campaign for good (cannot be undone)",
        """
        gate campaign close deposit-5pct             # asks first on a terminal
        gate campaign close deposit-5pct --yes -o table
        """,
    )
    close.add_argument("campaign", help="the campaign id")
    _yes_option(close, "close")
    _output_option(close)
    setp = _command(
        csub,
        "set",
        "change rate, burst, max_active, pass_ttl, closes_at, or the adaptive rate's "
        "mode and bounds",
        """
        gate campaign set deposit-5pct --rate 200 --burst 50
        gate campaign set deposit-5pct --max-active 288 --pass-ttl 600
        gate campaign set deposit-5pct --closes-at 2026-12-01T03:00:00Z -o table
        gate campaign set deposit-5pct --mode auto --rate-min 20 --rate-max 250
        """,
    )
    setp.add_argument("campaign", help="the campaign id")
    setp.add_argument("--rate", type=float, help="admissions per second")
    setp.add_argument(
        "--mode",
        choices=("auto", "manual"),
        help="adaptive rate: auto (follows the core's health) or manual (pinned)",
    )
    setp.add_argument("--rate-min", type=float, help="adaptive rate: the lowest it goes")
    setp.add_argument("--rate-max", type=float, help="adaptive rate: the highest it goes")
    setp.add_argument("--burst", type=int, help="admissions allowed at once above the rate")
    setp.add_argument("--max-active", type=int, help="admitted customers holding a pass at once")
    setp.add_argument("--pass-ttl", type=int, metavar="SECONDS", help="how long a pass lasts")
    setp.add_argument("--closes-at", metavar="TIME", help="ISO 8601 time the campaign closes")
    _output_option(setp)
    for name, summary in (
        ("block", "block a customer: their ticket and pass stop working (cannot be undone)"),
        ("revoke", "revoke a customer's pass (cannot be undone)"),
    ):
        action = _command(
            csub,
            name,
            summary,
            f"""
            gate campaign {name} deposit-5pct --customer kim-0001 --reason "fraud case 1234"
            gate campaign {name} deposit-5pct --customer kim-0001 --yes -o table
            """,
        )
        action.add_argument("campaign", help="the campaign id")
        action.add_argument(
            "--customer", required=True, help="the customer id (the gate computes its digest)"
        )
        action.add_argument("--reason", default="", help="why, written into the audit log")
        _yes_option(action, name)
        _output_option(action)

    audit = _command(
        sub,
        "audit",
        "the audit log: query, export, verify, dispute",
        parents=[admin_api],
        description="The audit log: query, export and dispute through a running gate's "
        "admin API (--admin-url, --token, --config before or after the action); verify "
        "offline, with no gate.",
    )
    audit.epilog = (
        "examples:\n  gate audit query deposit-5pct --customer kim-0001\n"
        "  gate audit export deposit-5pct --admin-url http://10.0.0.5:8081 > log.jsonl\n"
        '  gate audit --config /etc/fairgate/fairgate.toml --token "$OPS_TOKEN" '
        "dispute deposit-5pct --customer kim-0001"
    )
    asub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    query = _command(
        asub,
        "query",
        "entries about a customer, seqs or a time range",
        """
        gate audit query deposit-5pct --customer kim-0001 -o table
        gate audit query deposit-5pct --from-seq 100 --to-seq 200
        gate audit query deposit-5pct --since 2026-12-01T00:00:00Z --until 2026-12-01T00:05:00Z
        """,
        description="Entries about a customer, seqs or a time range (every page). "
        "A query by customer is itself written into the log (admin-query).",
    )
    query.add_argument("campaign", help="the campaign id")
    query.add_argument("--customer", help="the customer id (the gate computes its digest)")
    query.add_argument("--from-seq", type=int, help="the lowest seq")
    query.add_argument("--to-seq", type=int, help="the highest seq")
    query.add_argument("--since", help="ISO 8601 time, e.g. 2026-12-01T00:00:00Z")
    query.add_argument("--until", help="ISO 8601 time")
    _output_option(query)
    export = _command(
        asub,
        "export",
        "the whole log as JSON Lines, to stdout",
        """
        gate audit export deposit-5pct > deposit-5pct.jsonl
        gate audit export deposit-5pct --out deposit-5pct.jsonl
        """,
    )
    export.add_argument("campaign", help="the campaign id")
    export.add_argument(
        "--out", default="-", metavar="FILE", help="file to write (default: stdout)"
    )
    verify = _command(
        asub,
        "verify",
        "replay an export offline; exit 0 when it is clean, 1 naming the first problem",
        """
        gate audit verify log.jsonl --keys keys.json
        gate audit verify - --allow-unsealed < log.jsonl
        gate audit verify log.jsonl --sealed --allow-seal-gaps
        gate audit verify log.jsonl --checkpoint held.json --receipt receipt-17.json
        """,
    )
    verify.add_argument("file", help="the export ('-' = stdin)")
    verify.add_argument(
        "--keys", metavar="FILE", help="the public keys (JSON of /.well-known/fairgate/keys)"
    )
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
    dispute = _command(
        asub,
        "dispute",
        "a plain account of one customer, with proofs",
        """
        gate audit dispute deposit-5pct --customer kim-0001
        gate audit dispute deposit-5pct --customer kim-0001 --keys keys.json
        """,
        description="A plain account of one customer, with proofs checked here; exit 1 "
        "when a proof does not hold. The lookup is written into the log (admin-query).",
    )
    dispute.add_argument("campaign", help="the campaign id")
    dispute.add_argument("--customer", required=True, help="the customer id")
    dispute.add_argument(
        "--keys", metavar="FILE", help="check the proofs with these public keys (JSON)"
    )

    top = _command(
        sub,
        "top",
        "a live view of the campaigns: queue, admitted/s, rates, quota, core health, "
        "sealing; keys to pause, resume and change the rate",
        """
        gate top                                     # every campaign, every second
        gate top deposit-5pct ipo-7 --interval 2
        gate top --once                              # one frame, for scripts
        gate top --admin-url http://10.0.0.5:8081 --token "$OPS_TOKEN"
        gate top --config /etc/fairgate/fairgate.toml --once --interval 5
        """,
        parents=[admin_api],
        description="A live view of the campaigns through a running gate's admin API "
        "(like kubectl top): per campaign the queue, admitted/s measured between two "
        "samples against the configured rate and the rate in force, active passes, the "
        "quota (held, confirmed, remaining), the core's health as the adaptive controller "
        "judged it, sealing lag, and the admin calls that failed. Keys: p pause, r resume, "
        "e set the rate, +/- move it; each asks y/N in the view first and goes through the "
        "admin API, which writes it into the audit log with your token's name.",
    )
    top.add_argument("campaign", nargs="*", help="the campaigns to show (default: every campaign)")
    top.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between samples (default 1)",
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (two samples --interval apart, for admitted/s)",
    )

    witness = _command(
        sub,
        "witness",
        "witness a gate's checkpoints with your own key (docs/audit-format.md)",
    )
    witness.epilog = (
        "examples:\n  gate witness keygen --out witness.key\n"
        "  gate witness run --key witness.key --state fss-state --gate https://q.bank.example "
        "--campaign deposit-5pct --once"
    )
    wsub = witness.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = _command(
        wsub,
        "keygen",
        "write a new witness key; prints its vkey",
        """
        gate witness keygen --out witness.key
        gate witness keygen --out /etc/fss/witness.key --name witness.fss.example
        """,
    )
    keygen.add_argument(
        "--out", required=True, metavar="FILE", help="the key file to write (mode 0600)"
    )
    keygen.add_argument("--name", help="the witness's name (default: witness.<host name>)")
    wrun = _command(
        wsub,
        "run",
        "check and cosign the gate's latest checkpoints",
        """
        gate witness run --key witness.key --state fss-state --gate https://q.bank.example \\
                         --campaign deposit-5pct --campaign ipo-7 --interval 30
        gate witness run --key witness.key --state fss-state --gate https://q.bank.example \\
                         --campaign deposit-5pct --keys gate-keys.json --once
        """,
    )
    wrun.add_argument("--key", required=True, metavar="FILE", help="the witness key file")
    wrun.add_argument(
        "--state", required=True, metavar="DIR", help="directory for what the witness holds"
    )
    wrun.add_argument("--gate", required=True, metavar="URL", help="the gate's public URL")
    wrun.add_argument("--campaign", action="append", required=True, help="repeat for more")
    wrun.add_argument(
        "--keys", metavar="FILE", help="pin the gate's public keys (JSON) instead of fetching"
    )
    when = wrun.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="one round, then exit")
    when.add_argument("--interval", type=float, default=10.0, help="seconds between rounds")

    keys = _command(sub, "keys", "signing and customer-digest keys")
    keys.epilog = (
        "examples:\n  gate keys generate --out /etc/fairgate/keys.json\n"
        "  gate keys generate-digest --out /etc/fairgate/digest-keys.json"
    )
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = _command(
        ksub,
        "generate",
        "write a new signing key file",
        """
        gate keys generate --out /etc/fairgate/keys.json
        gate keys generate --out keys.json --yes     # replace an existing key file
        gate keys generate                           # to stdout
        """,
        description="Write a new signing key file (HMAC and Ed25519 keys). Replacing an "
        "existing file loses its keys: asked first, or --yes.",
    )
    gen.add_argument("--out", default="-", metavar="FILE", help="file to write (default: stdout)")
    _yes_option(gen, "replace an existing key file")
    digest = _command(
        ksub,
        "generate-digest",
        "write a customer-digest key file, kept apart from the signing keys; on an "
        "existing file, add a new current key (new campaigns use it, older ones keep theirs)",
        """
        gate keys generate-digest --out /etc/fairgate/digest-keys.json
        gate keys generate-digest --out /etc/fairgate/digest-keys.json   # again: rotate
        """,
    )
    digest.add_argument(
        "--out", default="-", metavar="FILE", help="file to write (default: stdout)"
    )
    edge = _command(
        ksub,
        "edge",
        "write the key file of a proxy that checks passes itself (nginx njs, HAProxy Lua): "
        "the pass and digest keys, from the gate's key files",
        """
        gate keys edge --config /etc/fairgate/fairgate.toml --out /etc/fairgate/edge-keys.json
        gate keys edge --signing-keys keys.json --digest-keys digest-keys.json --out edge.json
        """,
        description="Write the key file a proxy needs to check passes with no call to the "
        "gate (docs/proxy.md, the edge check): every HMAC key of the signing key file and "
        "every customer-digest key, by kid; no Ed25519 key. The files are those of --config "
        "(signing_keys, digest_keys) unless given. Deploy the output (mode 0600) to the "
        "proxy's host yourself, and again after each key rotation; never serve it.",
    )
    edge.add_argument("--config", metavar="FILE", help="TOML configuration file")
    edge.add_argument("--signing-keys", metavar="FILE", help="the signing key file")
    edge.add_argument("--digest-keys", metavar="FILE", help="the digest key file")
    edge.add_argument("--out", default="-", metavar="FILE", help="file to write (default: stdout)")
    # kubectl's habit: the admin API's options after the action too
    for leaf in [*csub.choices.values(), *asub.choices.values()]:
        if leaf is not verify:
            _admin_options(leaf, after_the_action=True)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds from 0.05 to 3600")
    return value


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="print again every --interval until Ctrl-C (-o json: one JSON object a line)",
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="seconds between prints with --watch (default 2)",
    )
    parser.epilog = (parser.epilog or "") + (
        "\n  gate campaign stats deposit-5pct --watch -o json | jq -c '{waiting, admitted}'"
        "\n  gate campaign stats deposit-5pct -w --interval 5 -o table"
    )


def _admin_options(parser: argparse.ArgumentParser, after_the_action: bool = False) -> None:
    # After the action, an option left out must not overwrite one given before it.
    default = argparse.SUPPRESS if after_the_action else None
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="TOML configuration file (admin_url, admin_token)",
    )
    parser.add_argument(
        "--admin-url",
        metavar="URL",
        default=default,
        help="the admin API (GATE_ADMIN_URL; default http://127.0.0.1:8081)",
    )
    parser.add_argument(
        "--token",
        default=default,
        help="an admin token (GATE_ADMIN_TOKEN; prefer the variable: a command "
        "line is visible to other users)",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("fairgate")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        from gate import __version__

        return __version__


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


def _edge_document(args: argparse.Namespace) -> dict[str, Any]:
    """The edge key file from the gate's signing and digest key files (never created)."""
    from gate.signing import edge_keys_document, load_or_create_keys

    config = load_config(args.config)
    signing = Path(args.signing_keys) if args.signing_keys else config.keys_path
    digest = Path(args.digest_keys) if args.digest_keys else config.digest_keys_path
    try:
        keys = load_or_create_keys(signing, create=False, digest_path=digest)
    except ConfigError as exc:
        raise GateError(str(exc), code="bad_keys") from None
    if not keys.digest_keys:
        raise GateError(f"{digest}: no digest key to export", code="bad_keys")
    return edge_keys_document(keys)


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
        _print(client.call("POST", base, spec), args.output)
    elif action == "list":
        _print(client.call("GET", base), args.output)
    elif action == "show":
        _print(client.call("GET", f"{base}/{args.campaign}"), args.output)
    elif action == "stats":
        path = f"{base}/{urllib.parse.quote(args.campaign, safe='')}/stats"
        if args.watch:
            from gate.top import watch

            return watch(lambda: client.call("GET", path), args.output, args.interval)
        _print(client.call("GET", path), args.output)
    elif action in ("pause", "resume", "close"):
        if action == "close":
            _confirm(args, f"close campaign {args.campaign}")
        _print(client.call("POST", f"{base}/{args.campaign}/{action}", {}), args.output)
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
        _print(client.call("PATCH", f"{base}/{args.campaign}", patch), args.output)
    elif action in ("block", "revoke"):
        _confirm(args, f"{action} customer {args.customer} in campaign {args.campaign}")
        _print(
            client.call(
                "POST",
                f"{base}/{args.campaign}/{action}",
                {"customer": args.customer, "reason": args.reason},
            ),
            args.output,
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
        with contextlib.suppress(BrokenPipeError):  # no reader: the exit code still says it
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
        _print(result, args.output)
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
    with contextlib.suppress(BrokenPipeError):  # no reader: the exit code still says it
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
    """Run one command; its exit code (the parser's epilog and docs/cli.md list them)."""
    code = 0
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`gate ... | head -1`): what it wanted, it has. Stop quietly
        # (with the command's own code if it had one: a failed verify stays 1), and keep the
        # interpreter's own final flush from printing the same error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
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
                log_format=args.log_format,
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
        if args.command == "top":
            from gate.top import run_top

            config = load_config(args.config, admin_url=args.admin_url, admin_token=args.token)
            client = AdminClient(config.admin_url, config.admin_token)
            return run_top(client, args.campaign, interval_s=args.interval, once=args.once)
        if args.command == "keys":
            from gate.signing import generate_keys_document, write_keys

            if args.action == "generate-digest":
                document = _digest_document(args.out)
            elif args.action == "edge":
                document = _edge_document(args)
            else:
                if args.out != "-" and Path(args.out).exists():
                    _confirm(args, f"replace the signing keys in {args.out}")
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
