"""Service settings, from `ROBUSTKD_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from robustkd.shared.models import HUB_ID, default_model


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # as in the Host header: IPv6 in brackets


def shown_path(path: str, roots: list[str] | None) -> str:
    """A path as the service shows it: relative to the root that holds it, else its last component.
    Answers and records never carry the host's absolute paths."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        return str(p)
    for root in roots or []:
        r = Path(root).expanduser().resolve()
        if p.resolve() != r and p.resolve().is_relative_to(r):
            return str(p.resolve().relative_to(r))
    if path == default_model():
        return HUB_ID
    return p.name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROBUSTKD_")

    cache_root: str = Field("cache", description="Folder holding one sub-folder per cache.")
    model: str = Field(default_factory=default_model, description="Model loaded at start-up.")
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = Field(None, description="When set, mutating endpoints need 'Bearer <token>'.")
    model_roots: list[str] | None = Field(
        None, description="Model folders must lie under one of these (JSON list). Unset: any folder on a "
                          "loopback bind; beyond loopback, only the folder of MODEL.")
    data_roots: list[str] | None = Field(
        None, description="User data files must lie under one of these (JSON list). Unset: any file on a "
                          "loopback bind; beyond loopback, only the folder `data` beside the cache root.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host names answered besides 127.0.0.1, localhost, [::1] and the bind "
                                          "host, comma-separated (`*.example.org`: a domain; `*`: any). Others get "
                                          "400, so a web page whose DNS name is rebound to this machine gets nothing.")
    max_report_bytes: int = Field(1 << 20, ge=0, description="Largest bench report.md the dashboard renders; a larger "
                                                             "one is linked as a file instead.")
    threads: int | None = Field(None, description="torch threads for the teacher (each Ray worker's, with the ray "
                                                  "engine).")
    engine: Literal["local", "ray"] = Field("local", description="Where precompute runs: this process, or Ray "
                                                                 "tasks, a shard each (pip install 'robustkd[ray]').")
    ray_address: str | None = Field(None, description="The Ray cluster the ray engine joins (default: RAY_ADDRESS, "
                                                      "else a Ray started in-process).")
    max_body_bytes: int = Field(1 << 20, ge=1, description="Largest request body read, counted as received.")
    max_rows_per_request: int = Field(65536, ge=1)
    max_streams: int = Field(16, ge=1, description="Concurrent row streams; more get 503 with Retry-After.")
    worker_stall_s: float = Field(900.0, gt=0, description="/readyz fails when a running job made no progress "
                                                           "for this long.")
    # uvicorn's connection limits (docs/security.md)
    limit_concurrency: int = Field(256, ge=1, description="Open connections + tasks before new requests get 503.")
    header_timeout_s: float = Field(10.0, gt=0, description="A connection that has not sent a whole request "
                                                            "head within this long is closed.")
    timeout_keep_alive_s: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this.")
    max_header_bytes: int = Field(16384, ge=1024, description="Largest incomplete request head (h11).")
    timeout_graceful_shutdown_s: int = Field(30, ge=1, description="Open streams get this long on shutdown.")
    backlog: int = Field(256, ge=1, description="Connections waiting to be accepted.")
    malloc_arenas: int = Field(2, ge=0, description="glibc malloc arenas of the server process (0: glibc's "
                                                    "default, 8 per core); few keep row streams' memory low.")
    stream_mmap_threshold: int = Field(128 * 1024, ge=0, description="While row streams run, allocations from "
                                       "this size (bytes) are mapped and unmapped on free (0: glibc's sliding "
                                       "threshold throughout); docs/reliability.md.")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [h.strip() for h in value.split(",") if h.strip()] if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _wildcards(cls, hosts: list[str]) -> list[str]:
        for h in hosts:
            if "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*.")):
                raise ValueError(f"{h!r}: a wildcard is `*` (any name) or `*.domain`")
        return hosts

    def trusted_hosts(self) -> list[str]:
        """The Host header names answered: loopback names, the bind host, ALLOWED_HOSTS."""
        bind = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return list(dict.fromkeys([*LOOPBACK_NAMES, bind, *self.allowed_hosts]))

    @property
    def public(self) -> bool:
        return not is_loopback(self.host)

    def allowed_model_roots(self) -> list[str] | None:
        """MODEL_ROOTS; unset beyond loopback: the configured model's folder only (None: anything)."""
        if self.model_roots is not None or not self.public:
            return self.model_roots
        return [self.model] if os.path.isdir(self.model) else []

    def allowed_data_roots(self) -> list[str] | None:
        """DATA_ROOTS; unset beyond loopback: `data` beside a local cache root (None: anything)."""
        if self.data_roots is not None or not self.public:
            return self.data_roots
        root = self.cache_root.rstrip("/")
        local = "://" not in root
        return [str(Path(root).expanduser().absolute().parent / "data") if local else os.path.abspath("data")]
