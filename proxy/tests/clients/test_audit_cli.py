"""The audit trail from the command line: changes made with `shardgate release`
against a running gateway, exported with `shardgate audit export`, checked
offline with `shardgate audit verify`, which finds an edit and names the entry."""
import json
import os
import subprocess

from conftest import CMD_TIMEOUT_S, _config, serve_listeners
from test_usage import new_key


def sg(bin_path, *args, env=None, cwd=None):
    return subprocess.run([bin_path, *args], capture_output=True, text=True, timeout=CMD_TIMEOUT_S, env=env, cwd=cwd)


def test_audit_export_and_verify(releases, shardgate_bin, tmp_path):
    data = releases["data"]
    token, token_hash = new_key(shardgate_bin, "release", "token", cwd=tmp_path)
    config = _config(tmp_path / "audit-gateway.toml", releases["key_pub"], [data.dir / "manifest.json"],
                     [{"kind": "dir", "path": data.dir}],
                     extra=('[registry]', f'path = "{tmp_path / "registry.redb"}"',
                            '[grpc]', 'listen = "127.0.0.1:0"', f'admin_tokens = ["{token_hash}"]'))
    env = {**os.environ, "SHARDGATE_ADMIN_TOKEN": token}
    with serve_listeners(shardgate_bin, config, usage_api=True) as (_, api, _):
        url = f"http://{api}"
        for args in (("release", "tag", data.name, "stable", data.version),
                     ("release", "deprecate", f"{data.name}@{data.version}", "--reason", "superseded"),
                     ("release", "takedown", f"{data.name}@{data.version}", "--reason", "court order")):
            r = sg(shardgate_bin, *args, "--api", url, env=env)
            assert r.returncode == 0, r.stderr
        out = tmp_path / "audit.jsonl"
        r = sg(shardgate_bin, "audit", "export", "--api", url, "-o", str(out), env=env)
        assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["tag", "deprecate", "takedown"]
    ok = sg(shardgate_bin, "audit", "verify", str(out))
    assert ok.returncode == 0 and ok.stdout.startswith(f"OK {out}: 3 entries"), ok.stdout + ok.stderr
    # Edit the middle entry: verify fails there, naming it.
    edited = tmp_path / "edited.jsonl"
    lines[1] = lines[1].replace("superseded", "routine")
    edited.write_text("\n".join(lines) + "\n")
    bad = sg(shardgate_bin, "audit", "verify", str(edited))
    assert bad.returncode == 1, bad.stdout
    assert "line 2 (entry 1)" in bad.stdout and "changed" in bad.stdout, bad.stdout
    # A log whose first entry was cut off is refused unless it is verified as a tail.
    tail = tmp_path / "tail.jsonl"
    tail.write_text("\n".join(out.read_text().splitlines()[1:]) + "\n")
    cut = sg(shardgate_bin, "audit", "verify", str(tail))
    assert cut.returncode == 1 and "line 1 (entry 1)" in cut.stdout and "not at the genesis" in cut.stdout, cut.stdout
    as_tail = sg(shardgate_bin, "audit", "verify", "--tail", str(tail))
    assert as_tail.returncode == 0 and "2 entries (entries 1 to 2)" in as_tail.stdout, as_tail.stdout
