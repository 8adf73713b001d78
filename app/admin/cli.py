"""`clarity admin`: run the admin app on Flask's development server.

Production runs it under gunicorn behind nginx (gunicorn.conf.py, nginx/clarity-admin.conf.j2).
The command is mounted on the `clarity` group by the top-level CLI; `worker` never imports
`app`, so it lives here.
"""

from __future__ import annotations

import click


@click.command("admin")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="ADMIN_HOST",
              help="Address to listen on (ADMIN_HOST).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              envvar="ADMIN_PORT", help="Port to listen on (ADMIN_PORT).")
@click.option("--debug/--no-debug", default=False, help="Flask debug mode (never in production).")
def admin(host: str, port: int, debug: bool) -> None:
    """Run the admin API and dashboard for development (no TLS, no proxy in front)."""
    import os

    from app.admin import create_app
    from app.admin.config import reset_admin_settings_cache
    from worker.settings import SettingsError

    # Nobody sits in front of the development server: trust no X-Forwarded-* header.
    os.environ.setdefault("ADMIN_PROXY_HOPS", "0")
    reset_admin_settings_cache()
    try:
        app = create_app()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Clarity admin on http://{host}:{port}/ (development server)")
    app.run(host=host, port=port, debug=debug, use_reloader=False, threaded=True)


if __name__ == "__main__":  # pragma: no cover
    admin()
