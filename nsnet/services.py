"""Service names for endpoints: "10.0.0.5:3306 is the shared database".

The operator's file (TOML, read with the standard library's tomllib):

    [[service]]
    name = "shared-db"
    match = ["10.0.0.5:3306", "[fd00::5]:3306"]

    [[service]]
    name = "redis"
    match = ["10.0.2.0/24:6379"]      # a CIDR, with a port

    [[service]]
    name = "wiki"
    match = ["10.0.3.0/28"]           # a CIDR, any port

The most specific match wins: a longer prefix first, then a rule with a port over one without.
"""
from __future__ import annotations

import ipaddress
import os
import stat

from .errors import ServiceConfigError
from .model import NO_SERVICES, Network, Rule, ServiceMap

__all__ = ["NO_SERVICES", "ServiceConfigError", "ServiceMap", "load_services", "parse_match",
           "parse_services"]


def parse_match(text: str) -> tuple[Network, int | None]:
    """'10.0.0.5:3306', '10.0.0.0/24', '10.0.0.0/24:53', '[fd00::5]:3306', 'fd00::/64'."""
    text = text.strip()
    port: int | None = None
    if text.startswith("["):
        addr, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad bracketed address {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:   # IPv4 with a port (IPv6 needs brackets to carry one)
        addr, _, port_text = text.partition(":")
        port = _port(port_text, text)
    else:
        addr = text
    try:
        network = ipaddress.ip_network(addr, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    return network, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"bad port in {whole!r}")
    return int(text)


def parse_services(text: str, origin: str = "services file") -> ServiceMap:
    import tomllib  # only when a file is given: the CLI's start does not pay for it

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ServiceConfigError(f"{origin}: not valid TOML: {exc}") from None
    except RecursionError:   # tomllib recurses per nesting level of arrays and tables
        raise ServiceConfigError(f"{origin}: nested too deeply") from None
    entries = doc.get("service", [])
    if not isinstance(entries, list):
        raise ServiceConfigError(f"{origin}: 'service' must be an array of tables ([[service]])")
    rules = []
    for i, entry in enumerate(entries, 1):
        where = f"{origin}: service #{i}"
        if not isinstance(entry, dict):
            raise ServiceConfigError(f"{where}: not a table")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise ServiceConfigError(f"{where}: 'name' must be a non-empty printable string")
        matches = entry.get("match")
        if isinstance(matches, str):
            matches = [matches]
        if not isinstance(matches, list) or not matches \
                or not all(isinstance(m, str) for m in matches):
            raise ServiceConfigError(f"{where} ({name}): 'match' must be a list of addresses")
        for m in matches:
            try:
                network, port = parse_match(m)
            except ValueError as exc:
                raise ServiceConfigError(f"{where} ({name}): {exc}") from None
            rules.append(Rule(name, network, port))
    unknown = set(doc) - {"service"}
    if unknown:
        raise ServiceConfigError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}")
    return ServiceMap(rules)


MAX_FILE = 1 << 20     # a services file is a few kilobytes; a megabyte is already absurd


def load_services(path: str | None) -> ServiceMap:
    """The operator's file, read with bounds: opened non-blocking (a FIFO there cannot hang
    us), a regular file only (not /dev/zero), at most MAX_FILE bytes."""
    if not path:
        return NO_SERVICES
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ServiceConfigError(f"services file {path}: not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_FILE + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ServiceConfigError(f"cannot read services file {path}: "
                                 f"{(exc.strerror or str(exc)).lower()}") from exc
    if len(data) > MAX_FILE:
        raise ServiceConfigError(f"services file {path}: larger than {MAX_FILE >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceConfigError(f"{path}: not UTF-8 text") from None
    return parse_services(text, path)
