"""OPC UA security: certificates, the trust folder, user identities, secure defaults."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.common.utils import ServiceError
from opcua_rig import driver_for, flat_simulation, opcua_tool, read_once

from drivers.base import ConnectFailed
from drivers.batch import GOOD
from drivers.opcua import OpcUaSettings
from drivers.opcua.security import Pki, certificate_uri
from drivers.opcua.simulator import OpcUaSimulator
from gateway.cli import main as cli_main
from gateway.config import ConfigError, load_config
from gateway.pki import STATE_ENV, with_default_pki

MAIN = '[gateway]\nsite = "fab"\nid = "gw"\n\n[store]\npath = "store.db"\n'


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
        ("Aes256_Sha256_RsaPss", "Sign"),
    ],
)
async def test_secure_session_with_username_and_password_from_a_file(
    tmp_path: Path, policy: str, mode: str
) -> None:
    """A secure channel with a generated certificate and a user's password reads."""
    secret = tmp_path / "opcua-password"
    secret.write_text("s3cret-Pa55\n")
    tool = opcua_tool(
        {"pressure": {"node_id": "ns=2;s=Chamber.Pressure"}},
        [("fast", "read", 0.1, ["pressure"])],
        security_policy=policy,
        security_mode=mode,
        identity="username",
        username="technician",
        password_file=str(secret),
        pki_dir=str(tmp_path / "pki"),
    )
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        driver = driver_for(tool, sim)
        batch = await read_once(driver)
    assert batch.values[0, 0] == 10.0
    assert batch.quality[0, 0] == GOOD
    pki = Pki(tmp_path / "pki")
    assert pki.certificate.is_file()
    assert stat.S_IMODE(pki.private_key.stat().st_mode) == 0o600
    assert (certificate_uri(pki.certificate) or "").endswith(":edge-gateway")


async def test_certificate_identity_uses_the_gateway_certificate(
    tmp_path: Path,
) -> None:
    """With identity = "certificate" the session is activated with an X509 token."""
    tool = opcua_tool(
        {"pressure": {"node_id": "ns=2;s=P"}},
        [("fast", "read", 0.1, ["pressure"])],
        security_policy="Basic256Sha256",
        security_mode="Sign",
        identity="certificate",
        pki_dir=str(tmp_path / "pki"),
    )
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        driver = driver_for(tool, sim)
        batch = await read_once(driver)
    assert batch.quality[0, 0] == GOOD


async def test_wrong_password_is_refused_naming_the_identity(tmp_path: Path) -> None:
    """A password the server refuses fails the connect with the user's name."""
    secret = tmp_path / "opcua-password"
    secret.write_text("right\n")
    tool = opcua_tool(
        {"pressure": {"node_id": "ns=2;s=P"}},
        [("fast", "read", 0.1, ["pressure"])],
        security_policy="Basic256Sha256",
        identity="username",
        username="technician",
        password_file=str(secret),
        pki_dir=str(tmp_path / "pki"),
    )
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        secret.write_text("wrong\n")  # the server keeps the first one
        driver = driver_for(tool, sim)
        with pytest.raises(ConnectFailed, match="refused the identity 'technician'"):
            await driver.connect()
        await driver.close()


async def test_untrusted_server_certificate_is_refused_with_the_copy_step(
    tmp_path: Path,
) -> None:
    """The error names the rejected file and the trust folder; copying it works."""
    tool = opcua_tool(
        {"pressure": {"node_id": "ns=2;s=P"}},
        [("fast", "read", 0.1, ["pressure"])],
        security_policy="Basic256Sha256",
        pki_dir=str(tmp_path / "pki"),
    )
    pki = Pki(tmp_path / "pki")
    sim = OpcUaSimulator(tool, flat_simulation(tool), update=False, trust_server=False)
    async with sim:
        driver = driver_for(tool, sim)
        with pytest.raises(ConnectFailed) as refused:
            await driver.connect()
        await driver.close()

        rejected = list(pki.rejected_dir.iterdir())
        assert len(rejected) == 1
        assert rejected[0].read_bytes() == sim.server_certificate.read_bytes()
        assert (
            f"is not trusted: if it is the tool's, copy {rejected[0]} to "
            f"{pki.trusted_dir}/" in str(refused.value)
        )

        # The technician's step, then the same driver connects.
        (pki.trusted_dir / rejected[0].name).write_bytes(rejected[0].read_bytes())
        batch = await read_once(driver)
    assert batch.quality[0, 0] == GOOD


def test_security_is_on_unless_none_is_written_out() -> None:
    """Leaving out security_policy means Basic256Sha256 with SignAndEncrypt."""
    settings = OpcUaSettings(kind="opcua", endpoint="opc.tcp://10.0.0.7:4840")
    assert settings.security_policy == "Basic256Sha256"
    assert settings.security_mode == "SignAndEncrypt"


def write_tool(folder: Path, source: str, extra: str = "") -> Path:
    (folder / "tools").mkdir(parents=True, exist_ok=True)
    (folder / "gateway.toml").write_text(MAIN)
    (folder / "tools" / "litho-09.toml").write_text(
        f"""
[driver]
kind = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
security_policy = "None"
{extra}

[[poll_groups]]
name = "fast"
interval_s = 1.0
tags = ["recipe"]

[[tags]]
name = "recipe"
source = {source}
"""
    )
    return folder


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        (
            '{ node_id = "ns=2;s=Recipe", data_type = "String" }',
            "String values are not numeric readings",
        ),
        (
            '{ node_id = "ns=2;s=Trace", data_type = "Double[]" }',
            "Double[] values are not numeric readings",
        ),
        ('{ node_id = "ns=two;s=X" }', "is not a NodeId such as"),
        ('{ browse_path = "2:Stage/:Temp" }', "is not '<namespace index>:<name>'"),
        ('{ node_id = "ns=2;i=5", browse_path = "2:A" }', "exactly one of"),
    ],
)
def test_tag_sources_are_checked_at_load_time(
    tmp_path: Path, source: str, rule: str
) -> None:
    """Strings, arrays and malformed addresses are refused naming the tag's key."""
    with pytest.raises(ConfigError) as refused:
        load_config(write_tool(tmp_path, source))
    message = "\n".join(str(issue) for issue in refused.value.issues)
    assert "tags[0].source" in message
    assert rule in message


def test_subscription_options_must_name_a_subscribe_group(tmp_path: Path) -> None:
    """Options for a group that is not subscribed are a configuration error."""
    extra = "[driver.subscriptions.fast]\nqueue_size = 5\n"
    with pytest.raises(ConfigError) as refused:
        load_config(write_tool(tmp_path, '{ node_id = "ns=2;s=R" }', extra))
    message = "\n".join(str(issue) for issue in refused.value.issues)
    assert "driver.subscriptions.fast" in message


def test_opcua_cert_creates_the_pair_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command writes cert and key, keeps them on a second run, prints the steps."""
    pki = Pki(tmp_path / "pki")
    assert cli_main(["opcua-cert", "--pki", str(pki.root), "--uri", "urn:ipc7:gw"]) == 0
    first = pki.certificate.read_bytes()
    assert cli_main(["opcua-cert", "--pki", str(pki.root)]) == 0
    out = capsys.readouterr().out
    assert pki.certificate.read_bytes() == first
    assert certificate_uri(pki.certificate) == "urn:ipc7:gw"
    assert "already present" in out
    assert str(pki.trusted_dir) in out


async def test_server_refusing_the_gateway_certificate_says_where_it_is(
    tmp_path: Path,
) -> None:
    """A server that does not trust the gateway's certificate gets a clear error."""
    tool = opcua_tool(
        {"pressure": {"node_id": "ns=2;s=P"}},
        [("fast", "read", 0.1, ["pressure"])],
        security_policy="Basic256Sha256",
        pki_dir=str(tmp_path / "pki"),
    )

    async def refuse(certificate: object, application: object) -> None:
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        assert sim.server is not None
        sim.server.set_certificate_validator(refuse)
        driver = driver_for(tool, sim)
        with pytest.raises(ConnectFailed) as refused:
            await driver.connect()
        await driver.close()
    certificate = Pki(tmp_path / "pki").certificate
    assert f"refused the gateway's certificate {certificate}" in str(refused.value)


def test_default_pki_folder_follows_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$STATE_DIRECTORY/pki`` under systemd, else ``pki/`` beside the store."""
    config = load_config(write_tool(tmp_path, '{ node_id = "ns=2;s=R" }'))
    settings = config.tools[0].driver
    monkeypatch.delenv(STATE_ENV, raising=False)
    assert with_default_pki(settings, config).pki_dir == tmp_path / "pki"

    monkeypatch.setenv(STATE_ENV, "/var/lib/edge-gateway")
    resolved = with_default_pki(settings, config)
    assert resolved.pki_dir == Path("/var/lib/edge-gateway/pki")
    explicit = settings.model_copy(update={"pki_dir": tmp_path / "own-pki"})
    assert with_default_pki(explicit, config).pki_dir == tmp_path / "own-pki"
