# SPDX-License-Identifier: MIT
"""The server-side SSLContext for STARTTLS and implicit TLS listeners.

One context serves every TLS listener. ``reload`` loads the certificate files again
into the same context, so a SIGHUP renews the certificate for every new handshake
without rebinding a socket (implicit-TLS servers keep their context object).
"""

from __future__ import annotations

import ssl

from fastmta.config import Config, ConfigError


def server_context(cfg: Config) -> ssl.SSLContext | None:
    """A hardened server context, or None when no listener offers TLS."""
    if all(lst.tls == "none" for lst in cfg.listeners):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    reload(ctx, cfg)
    return ctx


def reload(ctx: ssl.SSLContext, cfg: Config) -> None:
    """(Re)load ``[tls] cert_file`` / ``key_file``; ConfigError naming the key on failure."""
    try:
        ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    except FileNotFoundError as e:
        raise ConfigError([f"tls.cert_file: cannot read {e.filename or cfg.tls.cert_file}"]) from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError([f"tls.cert_file: cannot load the certificate or key: {e}"]) from None
