"""The audit log: hash-chained records, a tamper is found at its position, concurrent writers keep one chain."""
from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys

import pytest

from serving.audit import AUDIT_ENV, GENESIS, AuditChainError, audit_event, read_records, verify_chain


def test_records_chain_and_verify(tmp_path, monkeypatch):
    log = tmp_path / "audit" / "audit.jsonl"
    monkeypatch.setenv(AUDIT_ENV, str(log))
    first = audit_event("bundle.reload", "apikey:abcd", version="v3")
    second = audit_event("user.forget", "cli:ops", user_key="0123456789abcdef", rows=4)
    assert first["prev"] == GENESIS and first["seq"] == 0
    assert second["prev"] == first["hash"] and second["seq"] == 1
    assert verify_chain(log) == 2
    assert [r["action"] for r in read_records(log)] == ["bundle.reload", "user.forget"]


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_tampered_record_is_reported_with_its_position(tmp_path, tamper):
    log = tmp_path / "audit.jsonl"
    for i in range(5):
        audit_event("audience.export", "apikey:k", path=log, campaign="c1", users=10 + i)
    lines = log.read_text().splitlines()
    if tamper == "edit":
        rec = json.loads(lines[2])
        rec["details"]["users"] = 999
        lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    elif tamper == "delete":
        del lines[2]
    else:
        lines[2], lines[3] = lines[3], lines[2]
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditChainError) as err:
        verify_chain(log)
    assert err.value.position == 2
    assert "position 2" in str(err.value)


def test_rehashed_edit_breaks_the_next_link(tmp_path):
    """Recomputing the edited record's own hash does not help: the next record's prev no longer matches."""
    from serving.audit import record_hash
    log = tmp_path / "audit.jsonl"
    for i in range(3):
        audit_event("experiment.start", "apikey:k", path=log, experiment=f"e{i}")
    lines = log.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["actor"] = "apikey:someone-else"
    rec["hash"] = record_hash(rec)
    lines[1] = json.dumps(rec)
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditChainError) as err:
        verify_chain(log)
    assert err.value.position == 2


def _writer(path: str, n: int, who: int) -> None:
    for i in range(n):
        audit_event("auth.failure", f"proc:{who}", path=path, attempt=i)


def test_concurrent_processes_keep_one_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(log), 25, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert verify_chain(log) == 100


def test_cli_verify_exit_codes(tmp_path):
    log = tmp_path / "audit.jsonl"
    audit_event("bundle.rollback", "cli:ops", path=log, to="v1")
    audit_event("bundle.rollback", "cli:ops", path=log, to="v2")
    ok = subprocess.run([sys.executable, "-m", "serving.audit", "verify", "--path", str(log)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[-1])["records"] == 2
    log.write_text(log.read_text().replace('"v2"', '"v9"'))
    bad = subprocess.run([sys.executable, "-m", "serving.audit", "verify", "--path", str(log)],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert json.loads(bad.stdout.splitlines()[-1]) == {"path": str(log), "ok": False, "position": 1,
                                                       "reason": "content altered (hash mismatch)"}


def test_missing_log_has_no_records(tmp_path):
    assert verify_chain(tmp_path / "none.jsonl") == 0
