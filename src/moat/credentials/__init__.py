"""Grants: credentials stored once on the host, encrypted, and described to the proxy as rules.

This package's ``hosts`` and ``rules`` modules import nothing but the standard library: the proxy
daemon (its own interpreter, with mitmproxy) imports them too.
"""
