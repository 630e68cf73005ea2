"""serving.auth: hashed keys from config and env, 401/403/429, invalid settings named."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from serving.auth import Auth, AuthError, key_from_headers, sha256_hex


def cfg(**over):
    base = dict(enabled=True, api_keys_sha256=[sha256_hex("from-config")], api_keys_env="K", admin_keys_sha256=[],
                admin_keys_env="A", rate_limit_per_s=2, burst=2)
    return OmegaConf.create({**base, **over})


def status(auth, key, **kw):
    try:
        auth.check(key, **kw)
        return 200
    except AuthError as e:
        return e.status


def test_keys_from_config_and_env_are_hashed():
    a = Auth.from_cfg(cfg(), environ={"K": " env-key , other", "A": "boss"})
    assert "env-key" not in repr(a.key_digests) and sha256_hex("env-key") in a.key_digests
    assert status(a, "from-config") == 200 and status(a, "env-key") == 200
    assert status(a, None) == 401 and status(a, "") == 401 and status(a, "wrong") == 403
    assert status(a, "from-config", admin=True) == 403 and status(a, "boss", admin=True) == 200


def test_rate_limit_per_key():
    a = Auth.from_cfg(cfg(), environ={"K": "k1,k2"})
    assert [status(a, "k1", now=100.0) for _ in range(3)] == [200, 200, 429]
    assert status(a, "k2", now=100.0) == 200  # another key has its own bucket
    with pytest.raises(AuthError) as e:
        a.check("k1", now=100.1)
    assert e.value.retry_after > 0
    assert status(a, "k1", now=101.0) == 200  # refilled


def test_disabled_and_bad_settings():
    assert Auth.from_cfg(cfg(enabled=False), environ={}).check(None) == "anonymous"
    with pytest.raises(ValueError, match="serve.auth.api_keys_sha256"):
        Auth.from_cfg(cfg(api_keys_sha256=["clear-text-key"]), environ={})
    with pytest.raises(ValueError, match="rate_limit_per_s"):
        Auth.from_cfg(cfg(rate_limit_per_s=0), environ={})


def test_key_from_headers():
    assert key_from_headers({"x-api-key": " k "}) == "k"
    assert key_from_headers({"authorization": "Bearer tok"}) == "tok"
    assert key_from_headers({}) is None
