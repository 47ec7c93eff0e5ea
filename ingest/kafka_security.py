"""How streamrec's Kafka clients connect: TLS and SASL settings from ``[ingest]``."""

from __future__ import annotations

from typing import Any

from streamrec.config import IngestConfig

__all__ = ["client_security"]


def client_security(config: IngestConfig) -> dict[str, Any]:
    """The kafka-python arguments every client of ``config`` connects with
    (consumers, producers, the admin client and the net client alike)."""
    settings: dict[str, Any] = {"security_protocol": config.security_protocol}
    if "SSL" in config.security_protocol:
        settings["ssl_check_hostname"] = True
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(config, name):
                settings[name] = getattr(config, name)
    if config.security_protocol.startswith("SASL"):
        settings.update(sasl_mechanism=config.sasl_mechanism,
                        sasl_plain_username=config.sasl_username,
                        sasl_plain_password=config.sasl_password)
    return settings
