"""`textft whoami`, `textft keys ...`, `textft audit` and `textft apps ...`: API
keys, roles, the audit log and apps."""

from __future__ import annotations

import argparse

from ..client import ROLES, Client
from ..v1 import access_pb2
from .output import format_time, print_json, table, to_dict


def _role_name(role: int) -> str:
    return access_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    caller = client.whoami()
    if args.json:
        print_json(caller)
    else:
        key = f" (key {caller.key_id})" if caller.key_id else " (a key from TEXTFT_API_KEYS)"
        print(f"{caller.principal}: {_role_name(caller.role)} in app {caller.app}{key}")
    return 0


def cmd_keys_create(client: Client, args: argparse.Namespace) -> int:
    key, secret = client.create_api_key(args.principal, role=args.role, description=args.description)
    if args.json:
        print_json({"api_key": to_dict(key), "secret": secret})
    else:
        print(f"created key {key.key_id} for {key.principal} ({_role_name(key.role)} in app {key.app})")
        print("the secret is shown this once; store it now:")
        print(secret)
    return 0


def cmd_keys_list(client: Client, args: argparse.Namespace) -> int:
    keys = client.list_api_keys(include_revoked=args.all)
    if args.json:
        print_json({"api_keys": [to_dict(k) for k in keys]})
        return 0
    table(
        ("KEY ID", "PRINCIPAL", "ROLE", "CREATED", "REVOKED", "DESCRIPTION"),
        (
            (
                k.key_id,
                k.principal,
                _role_name(k.role),
                format_time(k, "create_time"),
                format_time(k, "revoke_time"),
                k.description,
            )
            for k in keys
        ),
    )
    return 0


def cmd_keys_revoke(client: Client, args: argparse.Namespace) -> int:
    key = client.revoke_api_key(args.key_id)
    if args.json:
        print_json(key)
    else:
        print(f"revoked key {key.key_id} of {key.principal}")
    return 0


def cmd_audit(client: Client, args: argparse.Namespace) -> int:
    page = client.audit_events(page_size=args.limit)
    if args.json:
        print_json(page)
        return 0
    table(
        ("TIME", "PRINCIPAL", "METHOD", "RESOURCE", "OUTCOME"),
        (
            (format_time(e, "time"), e.principal, e.method.rsplit("/", 1)[-1], e.resource, e.outcome)
            for e in page.events
        ),
    )
    return 0


def _print_app(app: access_pb2.App) -> None:
    print(f"{app.name}  created {format_time(app, 'create_time')}  {app.description}".rstrip())


def cmd_apps_create(client: Client, args: argparse.Namespace) -> int:
    response = client.create_app(args.app_id, args.description, admin_principal=args.admin)
    if args.json:
        print_json(response)
        return 0
    print(f"created {response.app.name}")
    if response.admin_secret:
        print(f"admin key {response.admin_key.key_id} for {response.admin_key.principal}; shown this once:")
        print(response.admin_secret)
        print(f"use it with TEXTFT_APP={args.app_id} TEXTFT_API_KEY=<the key above>")
    return 0


def cmd_apps_list(client: Client, args: argparse.Namespace) -> int:
    apps = client.list_apps()
    if args.json:
        print_json({"apps": [to_dict(a) for a in apps]})
        return 0
    table(("APP", "CREATED", "DESCRIPTION"), ((a.name, format_time(a, "create_time"), a.description) for a in apps))
    return 0


def cmd_apps_show(client: Client, args: argparse.Namespace) -> int:
    app = client.get_app(args.app or client.whoami().app)
    if args.json:
        print_json(app)
    else:
        _print_app(app)
    return 0


def cmd_apps_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_app(args.app_id)
    if not args.json:
        print(f"deleted apps/{args.app_id.removeprefix('apps/')}; its keys are revoked")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `whoami`, `keys` (with its subcommands) and `audit`."""
    p = sub.add_parser("whoami", help="the principal, app and role of this key")
    p.set_defaults(func=cmd_whoami)
    keys = sub.add_parser("keys", help="API keys of this app (admin role)")
    ksub = keys.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = ksub.add_parser("create", help="create a key; its secret is printed once")
    p.add_argument("principal", help="who holds the key: a user or a machine")
    p.add_argument("--role", choices=sorted(ROLES), default="predictor")
    p.add_argument("--description", default="")
    p.set_defaults(func=cmd_keys_create)
    p = ksub.add_parser("list", help="list keys")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p.set_defaults(func=cmd_keys_list)
    p = ksub.add_parser("revoke", help="revoke a key (every service refuses it within seconds)")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys_revoke)
    p = sub.add_parser("audit", help="mutating calls in this app, newest first (admin role)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_audit)
    apps = sub.add_parser("apps", help="apps: each has its own datasets, models and keys (platform admins)")
    asub = apps.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = asub.add_parser("create", help="create an app, and with --admin its first admin key (printed once)")
    p.add_argument("app_id")
    p.add_argument("--description", default="")
    p.add_argument("--admin", default="", metavar="PRINCIPAL", help="create an admin key of the app for PRINCIPAL")
    p.set_defaults(func=cmd_apps_create)
    p = asub.add_parser("list", help="list apps")
    p.set_defaults(func=cmd_apps_list)
    p = asub.add_parser("show", help="show an app (default: this key's)")
    p.add_argument("app", nargs="?", default="")
    p.set_defaults(func=cmd_apps_show)
    p = asub.add_parser("delete", help="delete an app without datasets or models; revokes its keys")
    p.add_argument("app_id")
    p.set_defaults(func=cmd_apps_delete)
