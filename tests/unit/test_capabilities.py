"""Capability markers (postgres, gpu, network): an absent capability skips its tests with a reason naming it and how
to get it, or fails them where DLPIPE_REQUIRE names it. The probes are replaced by stand-ins that report the
capability present or absent (what this machine really has is not under test here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import capabilities
from helpers.project import REPO_ROOT

ABSENT = "stand-in: not on this machine, install it with apt-get"


def test_present_capability_has_no_verdict() -> None:
    assert capabilities.verdict("postgres", None, {"postgres"}) is None
    assert capabilities.verdict("gpu", None, set()) is None


def test_absent_capability_skips_with_its_name_and_how_to_get_it() -> None:
    action, reason = capabilities.verdict("gpu", ABSENT, {"postgres"})
    assert action == "skip"
    assert "'gpu'" in reason and ABSENT in reason


def test_absent_required_capability_fails() -> None:
    action, reason = capabilities.verdict("postgres", ABSENT, {"postgres"})
    assert action == "fail"
    assert "'postgres'" in reason and "DLPIPE_REQUIRE" in reason and ABSENT in reason


def test_required_parses_comma_separated_names_and_rejects_unknown_ones() -> None:
    assert capabilities.required({}) == set()
    assert capabilities.required({"DLPIPE_REQUIRE": " postgres, gpu ,"}) == {"postgres", "gpu"}
    with pytest.raises(ValueError, match=r"unknown capability \['postgresql'\]; allowed: \['chromium', 'gpu', "):
        capabilities.required({"DLPIPE_REQUIRE": "postgresql"})


def test_postgres_bin_needs_both_server_binaries_and_takes_the_newest(tmp_path: Path) -> None:
    assert capabilities.postgres_bin(tmp_path) is None
    for version, names in {"13": ("initdb", "pg_ctl"), "16": ("initdb", "pg_ctl"), "17": ("initdb",)}.items():
        (tmp_path / version / "bin").mkdir(parents=True)
        for name in names:
            (tmp_path / version / "bin" / name).write_text("")
    assert capabilities.postgres_bin(tmp_path) == tmp_path / "16" / "bin"  # 17 lacks pg_ctl


def test_postgres_missing_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(capabilities, "POSTGRES_ROOT", tmp_path)
    missing = capabilities.postgres_missing()
    assert missing is not None and "initdb, pg_ctl" in missing and "postgresql" in missing


def run_marked_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, absent: set[str], require: str):
    """tests/conftest.py's hook in a pytest of its own, on one test per capability, with `absent` ones missing."""
    for name in capabilities.PROBES:
        monkeypatch.setitem(capabilities.PROBES, name, (lambda: ABSENT) if name in absent else (lambda: None))
    monkeypatch.setenv("DLPIPE_REQUIRE", require)
    pytester.makeconftest((REPO_ROOT / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    postgres: p\n    gpu: g\n    network: n\n")
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.postgres
        def test_pg():
            pass

        @pytest.mark.gpu
        def test_gpu():
            pass

        @pytest.mark.network
        def test_net():
            pass

        def test_plain():
            pass
        """
    )
    return pytester.runpytest("-rsE", "-p", "no:cacheprovider")


def test_hook_skips_absent_capabilities_with_the_reason(pytester, monkeypatch) -> None:
    result = run_marked_tests(pytester, monkeypatch, absent={"gpu", "network"}, require="")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines([f"SKIPPED*capability 'gpu' absent: {ABSENT}*"])
    result.stdout.fnmatch_lines([f"SKIPPED*capability 'network' absent: {ABSENT}*"])


def test_hook_fails_an_absent_capability_that_dlpipe_require_names(pytester, monkeypatch) -> None:
    result = run_marked_tests(pytester, monkeypatch, absent={"postgres", "gpu"}, require="postgres")
    result.assert_outcomes(passed=2, skipped=1, errors=1)  # a failure in setup: reported as an error
    required = f"*Failed: capability 'postgres' is required (DLPIPE_REQUIRE) but absent: {ABSENT}"
    result.stdout.fnmatch_lines([required, "ERROR *::test_pg *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_hook_runs_every_test_when_all_capabilities_are_present(pytester, monkeypatch) -> None:
    result = run_marked_tests(pytester, monkeypatch, absent=set(), require="postgres,gpu,network")
    result.assert_outcomes(passed=4)


def test_unknown_required_capability_stops_the_run(pytester, monkeypatch) -> None:
    result = run_marked_tests(pytester, monkeypatch, absent=set(), require="cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    allowed = "allowed: ['chromium', 'gpu', 'loopback_netns', 'network', 'postgres', 'read_only_dirs']"
    assert f"DLPIPE_REQUIRE: unknown capability ['cuda']; {allowed}" in result.stderr.str()
