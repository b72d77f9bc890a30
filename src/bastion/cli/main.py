"""`bastion run | check | demo | config-docs`, the identity commands (`bastion.cli.identity`) and the OAuth
commands (`bastion.cli.oauth`)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from bastion import __version__
from bastion.cli import identity, oauth
from bastion.cli.logging_setup import setup_logging


@click.group()
@click.version_option(__version__, prog_name="bastion")
def main() -> None:
    """Bastion: a security-first API gateway."""


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default="bastion.yaml",
              show_default=True, help="Gateway configuration file.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_path: str, log_level: str) -> None:
    """Run the gateway."""
    import uvloop

    from bastion.config.loader import ConfigError
    from bastion.identity.service import IdentitySetupError
    from bastion.runtime import run_gateway

    setup_logging(log_level)
    try:
        uvloop.run(run_gateway(config_path))
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(f"error: {issue}", err=True)
        sys.exit(2)
    except IdentitySetupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default="bastion.yaml",
              show_default=True, help="Gateway configuration file.")
def check(config_path: str) -> None:
    """Validate a configuration offline; every problem is reported with its location. Exit 2 on error."""
    from bastion.config.loader import ConfigError
    from bastion.pipeline.compiler import load_and_compile
    from bastion.pipeline.policy import PolicyServices
    from bastion.policies import builtin_policy_types
    from bastion.proxy.cluster import UpstreamCluster

    async def _check() -> int:
        loop = asyncio.get_running_loop()
        try:
            compiled = load_and_compile(config_path, generation=1, registry=builtin_policy_types(),
                                        services=PolicyServices(clock=loop.time, extras={"check_only": True}),
                                        clusters=lambda name, up: UpstreamCluster(name, up, loop))
        except ConfigError as exc:
            for issue in exc.issues:
                click.echo(f"error: {issue}", err=True)
            click.echo(f"{len(exc.issues)} problem(s) found in {config_path}", err=True)
            return 2
        click.echo(f"{config_path}: OK ({len(compiled.routes)} routes, {len(compiled.clusters)} upstreams)")
        return 0

    sys.exit(asyncio.run(_check()))


@main.command()
@click.option("--dir", "work_dir", type=click.Path(file_okay=False), default=".bastion-demo",
              show_default=True, help="Working directory for the demo's config, certificate and logs.")
@click.option("--upstream-port", default=9001, show_default=True, help="Port of the bundled demo API.")
def demo(work_dir: str, upstream_port: int) -> None:
    """Run the gateway in front of the bundled demo API."""
    from bastion.cli.demo import run_demo

    setup_logging("warning")
    sys.exit(run_demo(Path(work_dir), upstream_port))


@main.command("config-docs")
@click.option("--docs-dir", type=click.Path(file_okay=False), default="docs", show_default=True)
def config_docs(docs_dir: str) -> None:
    """Regenerate docs/configuration.md and docs/errors.md from the code."""
    from bastion.config import docs

    sys.exit(docs.main(["--docs-dir", docs_dir]))


identity.register(main)
oauth.register(main)


if __name__ == "__main__":
    main()
