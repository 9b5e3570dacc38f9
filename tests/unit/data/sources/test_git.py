"""`git` sources on the development repositories: refs, skip rules, licences, clones and damage."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from llm.config import GitOptions, SourceConfig, build_config
from llm.data.ingest import build_steps, process_unit
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.data.sources import git_repo
from llm.data.sources.code_rules import content_rule
from llm.data.sources.licences import licence_of_text
from llm.errors import InputNotFound, UserError


@pytest.fixture(scope="module")
def repos(shared_data: Path, tmp_path_factory) -> Path:
    """Both development repositories unpacked (a folder with `.git` each)."""
    out = tmp_path_factory.mktemp("repos")
    for name in ("grpc-health-checking", "marked-js"):
        with tarfile.open(shared_data / "code" / f"{name}.git.tar.gz") as tar:
            tar.extractall(out, filter="data")
    return out


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _read(uri: str, **git) -> tuple[list[dict], list[dict]]:
    """(documents with meta parsed, quarantine entries) of one git source, through the ingest reader path."""
    source = SourceConfig(kind="git", name="repo", uri=uri, git=git, files_per_shard=8)
    records = [r for unit in plan_inputs([source], "/nonexistent") for r in read_unit(unit)]
    docs = [dict(r, meta=json.loads(r["meta"])) for r in records if not is_quarantine(r)]
    return docs, [r for r in records if is_quarantine(r)]


def _by_path(docs: list[dict]) -> dict[str, dict]:
    return {d["meta"]["path"]: d for d in docs}


def test_files_at_a_tag_and_at_head_differ_as_the_history_says(repos: Path) -> None:
    grpc = repos / "grpc-health-checking"
    old, _ = _read(str(grpc), ref="v1.60.0")
    new, bad = _read(str(grpc))
    assert bad == []
    old_paths, new_paths = set(_by_path(old)), set(_by_path(new))
    # After the releases came the vendored six and the committed .pyc, nothing else.
    assert new_paths - old_paths == {"third_party/six/LICENSE", "third_party/six/README.rst",
                                     "third_party/six/six.py", "grpc_health/v1/__pycache__/health.cpython-311.pyc"}
    assert old_paths <= new_paths
    assert {d["meta"]["commit"] for d in old} == {_git(grpc, "rev-parse", "v1.60.0^{commit}")}
    assert {d["meta"]["commit"] for d in new} == {_git(grpc, "rev-parse", "HEAD")}
    assert {d["meta"]["ref"] for d in old} == {"v1.60.0"}
    # The content is the tagged commit's, read from git objects (the working tree is at HEAD).
    setup = _by_path(old)["setup.py"]["payload"]
    assert setup == subprocess.run(["git", "-C", str(grpc), "show", "v1.60.0:setup.py"], check=True,
                                   capture_output=True).stdout
    assert setup != (grpc / "setup.py").read_bytes()


def test_every_skip_rule_is_recorded_on_its_file_and_the_counts_add_up(repos: Path) -> None:
    cfg = build_config({}, ["tracking.enabled=false", "data.pii.enabled=false", "data.langid.enabled=false",
                            "data.quality.enabled=false", "data.content.enabled=false"])
    rules: dict[str, str] = {}
    for name in ("grpc-health-checking", "marked-js"):
        source = SourceConfig(kind="git", name=name, uri=str(repos / name))
        for unit in plan_inputs([source], "/nonexistent"):
            kept, rejected, quarantined, counts = process_unit(unit, build_steps(cfg))
            for c in counts.values():
                c.check(unit.shard)
            assert counts["read"].read == kept.num_rows + rejected.num_rows + quarantined.num_rows
            assert quarantined.num_rows == 0
            for row in rejected.to_pylist():
                assert row["stage"] == "extract"
                rules[json.loads(row["meta"])["path"]] = row["rule"]
                if row["rule"] == "alnum_fraction":  # the measured share and its threshold travel along
                    assert (row["value"], row["threshold"]) == (0.0, 0.25)
    assert rules["third_party/six/six.py"] == "vendored"
    assert rules["grpc_health/v1/health_pb2.py"] == "generated"
    assert rules["grpc_health/v1/health_pb2_grpc.py"] == "generated"
    assert rules["grpc_health/v1/__pycache__/health.cpython-311.pyc"] == "binary"
    assert rules["marked.min.js"] == "minified"
    assert rules["package-lock.json"] == "lock_file"
    assert rules["lib/marked.cjs"] == "generated"  # the bundler's "DO NOT EDIT" header
    assert rules["grpcio_health_checking.egg-info/dependency_links.txt"] == "alnum_fraction"
    assert "src/Lexer.js" not in rules and "grpc_health/v1/health.py" not in rules


def test_the_stack_thresholds_measure_the_real_minified_file(repos: Path) -> None:
    marked = repos / "marked-js"
    minified = (marked / "marked.min.js").read_bytes()
    rule, value, threshold, _ = content_rule(minified, GitOptions())
    assert (rule, threshold) == ("max_line_length", 1000) and value > 1000
    rule, value, threshold, _ = content_rule(minified, GitOptions(max_line_length=10**6))
    assert (rule, threshold) == ("mean_line_length", 100) and value > 100
    links = (repos / "grpc-health-checking" / "grpcio_health_checking.egg-info" / "dependency_links.txt").read_bytes()
    assert content_rule(links, GitOptions())[:3] == ("alnum_fraction", 0.0, 0.25)
    assert content_rule((marked / "src" / "Lexer.js").read_bytes(), GitOptions()) is None


def test_licence_from_the_licence_file_and_from_spdx_headers(repos: Path, tmp_path: Path) -> None:
    grpc, _ = _read(str(repos / "grpc-health-checking"))
    marked, _ = _read(str(repos / "marked-js"))
    # gRPC's LICENSE is Apache-2.0 followed by the BSD-3 and MPL-2.0 texts of code it bundles.
    assert {d["meta"]["licence"] for d in grpc} == {"Apache-2.0"}
    assert {d["meta"]["licence"] for d in marked} == {"MIT"}
    assert {d["meta"]["language"] for d in marked if d["meta"]["path"].startswith("src/")} == {"javascript"}

    repo = tmp_path / "spdx"
    repo.mkdir()
    (repo / "COPYING").write_text((repos / "grpc-health-checking" / "third_party" / "six" / "LICENSE").read_text())
    (repo / "tagged.c").write_text("/* SPDX-License-Identifier: GPL-2.0-or-later WITH Linux-syscall-note */\n"
                                   "int main(void) { return 0; }\n")
    (repo / "plain.py").write_text("def f(x):\n    return x + 1\n")
    _commit(repo)
    docs = _by_path(_read(str(repo))[0])
    assert docs["tagged.c"]["meta"]["licence"] == "GPL-2.0-or-later WITH Linux-syscall-note"
    assert docs["plain.py"]["meta"]["licence"] == "MIT"  # six's licence text, the repository's
    assert docs["tagged.c"]["meta"]["language"] == "c"


def test_symlinks_large_files_and_the_glob(tmp_path: Path) -> None:
    repo = tmp_path / "small"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("def f(x):\n    return x + 1\n")
    (repo / "pkg" / "big.py").write_text("x = 1\n" * 100)
    os.symlink("mod.py", repo / "pkg" / "link.py")
    (repo / "notes.txt").write_text("plain notes about the package\n")
    _commit(repo)
    docs = _by_path(_read(str(repo), max_file_bytes=200)[0])
    assert docs["pkg/link.py"]["content_type"] == "dropped:symlink"
    assert docs["pkg/big.py"]["content_type"] == "dropped:file_too_large"
    assert docs["pkg/big.py"]["meta"]["drop"] == {"value": 600.0, "threshold": 200.0, "detail": None}
    assert docs["pkg/mod.py"]["content_type"] == "text" and docs["notes.txt"]["meta"]["licence"] is None
    source = SourceConfig(kind="git", name="repo", uri=str(repo), glob="pkg/*.py")
    planned = sorted(path for u in plan_inputs([source], "/nonexistent") for path, *_ in u.fingerprint[1:])
    assert planned == ["pkg/big.py", "pkg/link.py", "pkg/mod.py"]


COMMON_LICENCES = Path("/usr/share/common-licenses")


def test_licence_texts_are_told_apart(repos: Path) -> None:
    grpc = (repos / "grpc-health-checking" / "LICENSE").read_text()
    bsd3 = grpc[grpc.index("BSD 3-Clause License"):grpc.index("Mozilla Public License")]
    assert licence_of_text(bsd3) == "BSD-3-Clause"
    assert licence_of_text(re.sub(r"3\. Neither the name.*?permission\.", "", bsd3, flags=re.S)) == "BSD-2-Clause"
    assert licence_of_text(grpc[grpc.index("Mozilla Public License"):]) == "MPL-2.0"
    assert licence_of_text("Copyright 2020 someone. All rights reserved.") is None
    # The Debian copies of the licences, where the system has them: the GPL-3 text names the LGPL,
    # the LGPL-3 text the GPL, and each is still itself.
    expected = {"GPL-2": "GPL-2.0", "GPL-3": "GPL-3.0", "LGPL-2.1": "LGPL-2.1", "LGPL-3": "LGPL-3.0",
                "Apache-2.0": "Apache-2.0", "MPL-2.0": "MPL-2.0", "BSD": "BSD-3-Clause"}
    present = {name: ident for name, ident in expected.items() if (COMMON_LICENCES / name).is_file()}
    for name, ident in present.items():
        assert licence_of_text((COMMON_LICENCES / name).read_text(errors="replace")) == ident, name


def _commit(repo: Path) -> None:
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "files")


def test_a_bare_clone_and_a_file_url_read_the_same_files(repos: Path, tmp_path: Path) -> None:
    grpc = repos / "grpc-health-checking"
    bare = tmp_path / "grpc.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(grpc), str(bare)], check=True)
    plain, _ = _read(str(grpc), ref="v1.64.0")
    from_bare, _ = _read(str(bare), ref="v1.64.0")
    url = bare.as_uri()
    clones = tmp_path / "clones"
    from_url, _ = _read(url, ref="v1.64.0", clone_dir=str(clones))
    strip = lambda docs: sorted((d["id"], d["payload"], d["content_type"], d["meta"]["commit"]) for d in docs)
    assert strip(plain) == strip(from_bare) == strip(from_url)
    assert {d["meta"]["repository"] for d in from_url} == {url}
    assert len(list(clones.iterdir())) == 1
    # A new commit upstream is fetched into the existing clone on the next run.
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
    (work / "added.py").write_text("print('added')\n")
    _git(work, "add", "added.py")
    _git(work, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "add")
    _git(work, "push", "-q", "origin", "HEAD")
    again, _ = _read(url, clone_dir=str(clones))
    assert "added.py" in _by_path(again)
    assert len(list(clones.iterdir())) == 1


def test_a_missing_ref_or_repository_is_a_clear_error(repos: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"source 'repo' \(git\).*ref 'v9\.9\.9' not found"):
        _read(str(repos / "marked-js"), ref="v9.9.9")
    with pytest.raises(InputNotFound, match="does not exist"):
        _read(str(tmp_path / "nowhere"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a git repository"):
        _read(str(tmp_path / "plain"))


def test_credentials_in_a_url_are_refused_and_never_shown(tmp_path: Path) -> None:
    assert git_repo.shown_location("https://me:s3cret@example.invalid/x.git") == "https://example.invalid/x.git"
    for uri in ("https://me:s3cret@example.invalid/x.git", "https://ghp_s3cret@example.invalid/x.git"):
        with pytest.raises(UserError, match="carries credentials") as err:
            _read(uri, clone_dir=str(tmp_path))
        assert "s3cret" not in str(err.value)
    assert not any(tmp_path.iterdir())  # refused before any clone
    # A clone that fails (port 1 on loopback refuses at once: no network needed) names the URL.
    with pytest.raises(UserError, match=r"repository http://127\.0\.0\.1:1/x\.git: git clone failed"):
        _read("http://127.0.0.1:1/x.git", clone_dir=str(tmp_path))


def test_a_damaged_object_is_quarantined_and_a_damaged_commit_is_a_clear_error(repos: Path, tmp_path: Path) -> None:
    grpc = tmp_path / "grpc"
    shutil.copytree(repos / "grpc-health-checking", grpc)
    blob = _git(grpc, "rev-parse", "HEAD:grpc_health/v1/health.py")
    loose = grpc / ".git" / "objects" / blob[:2] / blob[2:]
    os.chmod(loose, 0o644)
    loose.write_bytes(b"not a zlib stream")
    docs, bad = _read(str(grpc))
    assert [b["location"] for b in bad] == [f"{grpc}#path=grpc_health/v1/health.py"]
    assert blob in bad[0]["error"] and bad[0]["records"] == 1
    assert len(docs) + len(bad) == len(_git(grpc, "ls-tree", "-r", "--name-only", "HEAD").splitlines())
    assert "grpc_health/v1/_async.py" in _by_path(docs)  # the files after the damaged one are read

    commit = _git(grpc, "rev-parse", "HEAD")
    loose = grpc / ".git" / "objects" / commit[:2] / commit[2:]
    os.chmod(loose, 0o644)
    loose.write_bytes(b"not a zlib stream")
    with pytest.raises(UserError, match=r"ref 'HEAD' cannot be read \(a damaged repository\?\): .*corrupt"):
        _read(str(grpc))


def test_ingest_runs_a_git_source_end_to_end(repos: Path, tmp_path: Path) -> None:
    from llm.data.dataset import read_manifest
    from llm.data.ingest import run_ingest
    from llm.executor import LocalExecutor

    cfg = build_config({}, [f"data.sources=[{{kind: git, name: marked, uri: '{repos / 'marked-js'}', "
                            "git: {ref: v4.3.0}}]", f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"])
    out = str(tmp_path / "docs")
    run_ingest(cfg, str(tmp_path / "no-crawl"), out, LocalExecutor())
    counts = read_manifest(out)["totals"]["counts"]
    files = len(_git(repos / "marked-js", "ls-tree", "-r", "--name-only", "v4.3.0").splitlines())
    assert counts["read"] == files
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()) + counts["quarantined"]
    assert counts["dropped"]["minified"] == 1 and counts["dropped"]["generated"] == 3
    assert "lock_file" not in counts["dropped"]  # the lockfile came after v4.3.0


def test_a_missing_repository_is_skipped_with_one_warning_where_the_source_allows_it(
        repos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm.data.dataset import read_manifest
    from llm.data.ingest import run_ingest
    from llm.data.readers import plan_sources
    from llm.executor import LocalExecutor

    (tmp_path / "unpacked").mkdir()  # a project from an archive: files, no `.git`
    (tmp_path / "unpacked" / "setup.py").write_text("print('hello')\n")
    for where in (tmp_path / "unpacked", tmp_path / "nowhere"):
        source = SourceConfig(kind="git", name="self", uri=str(where), git={"if_missing": "skip"})
        caplog.clear()
        plan = plan_sources([source], "/nonexistent")
        assert plan.units == [] and list(plan.skipped) == ["self"]
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings == [plan.skipped["self"]] and str(where) in warnings[0]
    # The default stops the run; a damaged `.git` is an error even with `skip`.
    with pytest.raises(UserError, match="not a git repository"):
        plan_sources([SourceConfig(kind="git", name="self", uri=str(tmp_path / "unpacked"))], "/nonexistent")
    damaged = tmp_path / "damaged"
    shutil.copytree(repos / "marked-js", damaged)
    (damaged / ".git" / "HEAD").write_text("garbage\n")
    with pytest.raises(UserError, match="cannot be opened"):
        plan_sources([SourceConfig(kind="git", name="self", uri=str(damaged), git={"if_missing": "skip"})], "")

    # Beside a source that is there, ingest reads it and records the skipped one under `sources`.
    cfg = build_config({}, [f"data.sources=[{{kind: git, name: self, uri: '{tmp_path / 'unpacked'}', "
                            "git: {if_missing: skip}}, "
                            f"{{kind: git, name: marked, uri: '{repos / 'marked-js'}', git: {{ref: v4.3.0}}}}]",
                            f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"])
    out = str(tmp_path / "docs")
    run_ingest(cfg, str(tmp_path / "no-crawl"), out, LocalExecutor())
    manifest = read_manifest(out)
    assert manifest["sources"]["self"]["units"] == 0
    assert "not a git repository" in manifest["sources"]["self"]["skipped"]
    assert manifest["sources"]["marked"]["units"] == manifest["totals"]["shards"] > 0
    assert "skipped" not in manifest["sources"]["marked"]
    # `uri: .` from two folders without `.git`: the same identity, so the second run reuses the version
    # and reports its own folder as the reason.
    dot = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": [
        cfg.data.sources[0].model_copy(update={"uri": "."}), cfg.data.sources[1]]})})
    reasons = []
    for folder in ("unpacked", "nowhere-else"):
        (tmp_path / folder).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / folder)
        result = run_ingest(dot, str(tmp_path / "no-crawl"), str(tmp_path / "docs-dot"), LocalExecutor())
        reasons.append(result["sources"]["self"]["skipped"])
    assert result["reused"] and f"repository {tmp_path / 'nowhere-else'}:" in reasons[1]
    assert f"repository {tmp_path / 'unpacked'}:" in reasons[0]
    # With nothing else to read, the error says why the skipped source gave nothing.
    alone = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": cfg.data.sources[:1]})})
    with pytest.raises(UserError, match="hold no input files; source 'self' \\(git\\) skipped"):
        run_ingest(alone, str(tmp_path / "no-crawl"), str(tmp_path / "docs2"), LocalExecutor())


def test_a_relative_repository_path_is_read_from_any_folder(repos: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repos / "marked-js")
    units = plan_inputs([SourceConfig(kind="git", name="self", uri=".", git={"ref": "v4.3.0"})], "/nonexistent")
    monkeypatch.chdir(tmp_path)  # where a worker may run: no repository around it
    docs = [json.loads(r["meta"]) for unit in units for r in read_unit(unit) if not is_quarantine(r)]
    assert {d["repository"] for d in docs} == {str(repos / "marked-js")}
    assert len(docs) == len(_git(repos / "marked-js", "ls-tree", "-r", "--name-only", "v4.3.0").splitlines())
