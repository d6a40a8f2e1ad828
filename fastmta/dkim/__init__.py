# SPDX-License-Identifier: MIT
"""DKIM signing of relayed mail (RFC 6376, Ed25519 by RFC 8463).

``canon`` canonicalises and hashes (pure), ``signer`` selects headers and builds
the signatures, ``keys`` loads, checks and generates keys, ``worker`` is the
signing process and ``service`` the loop's end of it, which the remote deliverer
calls before each send.
"""
