"""The `pagedserve` command: one subcommand per service, `up` for all of them, and a client.

pagedserve up [--port 50051]        every service as its own process, supervised
pagedserve blockmgr|kvpool|executor|gateway [flags]   one service
pagedserve generate "prompt"        one request to a running gateway
pagedserve chat                     an interactive chat with a running gateway
pagedserve convert-default          convert the packaged default model once
"""

from __future__ import annotations

import sys


def _blockmgr(argv: list[str]) -> int:
    from pagedserve.blockmgr.service import main

    return main(argv)


def _kvpool(argv: list[str]) -> int:
    from pagedserve.executor.pool_keeper import main

    return main(argv)


def _executor(argv: list[str]) -> int:
    from pagedserve.executor.service import main

    return main(argv)


def _gateway(argv: list[str]) -> int:
    from pagedserve.gateway.service import main

    return main(argv)


def _up(argv: list[str]) -> int:
    from pagedserve.launcher import main

    return main(argv)


def _generate(argv: list[str]) -> int:
    from pagedserve.client import generate_main

    return generate_main(argv)


def _chat(argv: list[str]) -> int:
    from pagedserve.client import chat_main

    return chat_main(argv)


def _convert_default(argv: list[str]) -> int:
    import argparse

    from pagedserve.common.logs import setup_logging
    from pagedserve.executor.model_store import convert_default_model

    parser = argparse.ArgumentParser(
        prog="pagedserve convert-default", description="Convert the packaged default model (once)."
    )
    parser.add_argument(
        "--force", action="store_true", help="convert again even if a conversion exists"
    )
    args = parser.parse_args(argv)
    setup_logging("convert")
    print(convert_default_model(force=args.force))
    return 0


COMMANDS = {
    "up": (_up, "start every service as its own process and supervise them"),
    "blockmgr": (_blockmgr, "run the block manager service"),
    "kvpool": (_kvpool, "run a KV pool keeper for one device"),
    "executor": (_executor, "run an executor (model, scheduler, sampler)"),
    "gateway": (_gateway, "run the public gRPC gateway"),
    "generate": (_generate, "send one request to a running gateway"),
    "chat": (_chat, "chat with a running gateway"),
    "convert-default": (_convert_default, "convert the packaged default model"),
}


def usage() -> str:
    lines = ["usage: pagedserve COMMAND [flags]   (pagedserve COMMAND --help for its flags)", ""]
    lines += [f"  {name:<16} {description}" for name, (_, description) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"pagedserve: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return command[0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
