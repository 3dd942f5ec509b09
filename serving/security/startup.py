"""The security files a server is given, checked once before any worker starts.

With several workers each reads the files itself; checking them here first turns a wrong path or a key
that does not match its certificate into one clear error and exit code 2, not a worker crash loop.
"""

from __future__ import annotations

from cnnserve.serving.security.tls import load_material, tls_files
from cnnserve.serving.security.tokens import read_entries
from cnnserve.serving.settings import ServerSettings


def check_security_files(settings: ServerSettings) -> None:
    """Raise a SettingsError naming the file when the TLS files or the token file cannot serve."""
    if settings.tls:
        load_material(tls_files(settings))
    if settings.auth_tokens is not None:
        read_entries(settings.auth_tokens)
