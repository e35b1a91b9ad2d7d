"""Settings of the network sources: the C-STORE listener, its spool, TLS, and pulls from a PACS."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
"""PS3.5 Table 6.2-1, AE: 1-16 characters of the default repertoire, no backslash."""


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped, or raise ValueError naming the rule it breaks."""
    v = value.strip()
    if not AE_TITLE.match(v):
        raise ValueError(
            f"AE title {value!r} is not valid: 1-16 printable ASCII characters without '\\' "
            "(PS3.5 Table 6.2-1), e.g. DICOMLAKE"
        )
    return v


class TlsSettings(BaseModel):
    """DICOM TLS (PS3.15 Annex B.1, the BCP 195 profile) on the listener.

    TLS is on when ``certificate`` and ``private_key`` are both set.
    """

    certificate: str | None = Field(None, description="PEM certificate (chain) of the listener. Default: none")
    private_key: str | None = Field(None, description="PEM private key of the listener. Default: none")
    ca_file: str | None = Field(None, description="PEM CA bundle that client certificates must chain to. Default: none")
    require_client_certificate: bool = Field(
        False, description="Refuse a TLS handshake without a valid client certificate. Default: false"
    )
    minimum_version: str = Field("1.2", description="Lowest TLS version accepted: 1.2 or 1.3. Default: 1.2")

    @property
    def enabled(self) -> bool:
        return bool(self.certificate and self.private_key)

    @field_validator("minimum_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v not in ("1.2", "1.3"):
            raise ValueError(f"dimse.tls.minimum_version={v!r}: choose 1.2 or 1.3 (older TLS is not allowed)")
        return v


class PullSettings(BaseModel):
    """Defaults of ``dicomlake pull`` (each can be overridden on the command line)."""

    concurrency: int = Field(1, description="Studies retrieved at the same time. Default: 1")
    instances_per_hour: int = Field(0, description="Most instances requested per hour; 0 = no limit. Default: 0")
    window: str | None = Field(
        None, description="Off-peak window in local time, e.g. '19:00-07:00'; retrieval waits outside it. Default: none"
    )
    find_limit: int = Field(
        500,
        description="A C-FIND answer with this many matches (or more) is taken as cut short by the "
        "PACS's result limit and the date range is split. Default: 500",
    )
    timeout_s: float = Field(600.0, description="Longest wait for one study's C-MOVE/C-GET, seconds. Default: 600")
    settle_s: float = Field(
        30.0, description="After a C-MOVE, how long to wait for the moved instances to arrive. Default: 30"
    )


class DimseSettings(BaseModel):
    """The DICOM listener (``dicomlake serve``) and the DIMSE client (``dicomlake pull``)."""

    ae_title: str = Field("DICOMLAKE", description="Our AE title, called by peers. Default: DICOMLAKE")
    port: int = Field(11112, description="TCP port the listener accepts associations on. Default: 11112")
    bind: str = Field(
        "127.0.0.1",
        description="Address the listener binds; 0.0.0.0 for every interface. Default: 127.0.0.1",
    )
    allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="Calling AE titles accepted; empty accepts any. Default: [] (any)",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Peer IP addresses or networks (CIDR) accepted; empty accepts any. Default: [] (any)",
    )
    require_called_aet: bool = Field(
        True, description="Refuse associations whose called AE title is not ours. Default: true"
    )
    max_associations: int = Field(16, description="Associations served at the same time. Default: 16")
    max_pdu: int = Field(
        1024 * 1024,
        description="Largest PDU we receive (PS3.8 Maximum Length); 0 = unlimited. Default: 1048576",
    )
    network_timeout_s: float = Field(60.0, description="Idle seconds before an association is closed. Default: 60")
    fsync: bool = Field(
        True,
        description="fsync each received instance (and the spool folder) before acknowledging it. "
        "Turning it off loses acknowledged instances on power loss; only for measurements. Default: true",
    )
    keep_files: bool = Field(
        False,
        description="Keep each received file under <lake>/files/ after its header is in the lake; "
        "false keeps metadata only (the file, pixel data included, is dropped). Default: false",
    )
    min_free_bytes: int = Field(
        64 * 1024 * 1024,
        description="Answer 0xA700 (out of resources) when the lake's disk has less free space. Default: 64 MiB",
    )
    spool_max_instances: int = Field(
        0,
        description="Answer 0xA700 (out of resources) while this many received instances wait in the spool "
        "for the lake (the lake is down or slower than the senders); 0 = no limit. Default: 0",
    )
    modalities: list[str] = Field(
        default_factory=list, description="Only store instances of these modalities; empty = all. Default: []"
    )
    sop_classes: list[str] = Field(
        default_factory=list,
        description="Only accept these SOP Class UIDs (presentation contexts of others are rejected); "
        "empty = every storage SOP class. Default: []",
    )
    accept_private_sop_classes: bool = Field(
        True,
        description="Accept SOP classes outside the standard's root (vendors' private objects) as storage. "
        "Default: true",
    )
    drain_batch: int = Field(500, description="Spool files committed to the lake per transaction. Default: 500")
    drain_interval_s: float = Field(
        0.5, description="Longest wait before a partial batch is committed, seconds. Default: 0.5"
    )
    drain_workers: int = Field(
        1, description="Processes extracting headers from the spool; 0 = in the service process. Default: 1"
    )
    control_port: int = Field(
        0, description="127.0.0.1 port of the service's internal HTTP endpoint; 0 picks a free one. Default: 0"
    )
    worklist: str | None = Field(
        None,
        description="Modality Worklist provider AE@HOST:PORT that `wrap` (and the worklist-identity "
        "curation check) query when --worklist is not given. Default: none",
    )
    store_to: str | None = Field(
        None,
        description="PACS AE@HOST:PORT that the web capture page (/capture) sends what it wraps to; "
        "none keeps the objects in the lake folder only. Default: none",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)  # type: ignore[arg-type]
    pull: PullSettings = Field(default_factory=PullSettings)  # type: ignore[arg-type]

    @field_validator("ae_title")
    @classmethod
    def _aet(cls, v: str) -> str:
        return check_ae_title(v)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, v: list[str]) -> list[str]:
        return [check_ae_title(a) for a in v]

    @field_validator("port", "control_port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise ValueError(f"port {v} is outside 0-65535; choose e.g. 11112")
        return v

    @field_validator("modalities")
    @classmethod
    def _mods(cls, v: list[str]) -> list[str]:
        return [m.strip().upper() for m in v if m.strip()]
