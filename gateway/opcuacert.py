"""``edge-gateway opcua-cert``: create the gateway's OPC UA certificate, show the steps.

The certificate and key go into the PKI folder the daemon uses (``--pki``, else the
default of the configuration: ``$STATE_DIRECTORY/pki`` or ``pki/`` beside the
store). An existing pair is kept unless ``--force`` is given.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

from drivers.opcua.config import OpcUaSettings
from drivers.opcua.security import CertificateError, Pki, application_uri, thumbprint
from gateway.config.models import GatewayConfig
from gateway.pki import default_pki_dir

__all__ = ["opcua_cert"]

EXIT_OK = 0
EXIT_FAILURE = 1


def opcua_cert(
    config: GatewayConfig | None,
    pki_dir: Path | None,
    uri: str | None,
    force: bool,
) -> int:
    """Create (or show) the certificate; print where it is and what to do next."""
    if pki_dir is None:
        if config is None:
            raise ValueError("opcua_cert needs a configuration or a PKI folder")
        pki_dir = _configured_pki(config) or default_pki_dir(config)
    uri = uri or (config and _configured_uri(config)) or application_uri()
    pki = Pki(pki_dir)
    try:
        created = pki.ensure_certificate(uri, force=force)
        der = pki.certificate.read_bytes()
    except (CertificateError, OSError) as exc:
        print(f"edge-gateway: {exc}")
        return EXIT_FAILURE
    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    until = cert.not_valid_after_utc.astimezone(datetime.UTC).date().isoformat()
    print(
        f"gateway certificate: {pki.certificate} "
        f"({'created' if created else 'already present; --force replaces it'})\n"
        f"  private key:       {pki.private_key} (owner only)\n"
        f"  application URI:   {', '.join(uris)}\n"
        f"  SHA-256:           {thumbprint(der)}\n"
        f"  valid until:       {until}\n"
        "\n"
        "Next steps:\n"
        f"  1. Give {pki.certificate} to the tool's OPC UA server as a trusted\n"
        "     client certificate (the tool's own procedure; often a USB stick).\n"
        "  2. Copy the server's certificate into\n"
        f"     {pki.trusted_dir}/\n"
        "     If you do not have it, start the gateway: the refused certificate is\n"
        f"     written to {pki.rejected_dir}/ and the log names the file.\n"
        "     Check its thumbprint with the tool's screen before copying it.\n"
        "  3. Make the folder readable by the service user, for example:\n"
        f"     chown -R edge-gateway: {pki.root}"
    )
    return EXIT_OK


def _opcua_settings(config: GatewayConfig) -> list[OpcUaSettings]:
    return [t.driver for t in config.tools if isinstance(t.driver, OpcUaSettings)]


def _configured_pki(config: GatewayConfig) -> Path | None:
    folders = {s.pki_dir for s in _opcua_settings(config) if s.pki_dir is not None}
    return folders.pop() if len(folders) == 1 else None


def _configured_uri(config: GatewayConfig) -> str | None:
    uris = {s.application_uri for s in _opcua_settings(config) if s.application_uri}
    return uris.pop() if len(uris) == 1 else None
