"""One data dir: its default, the environment's override and the store files it holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_elasticity.core.data_dir import DataDir


def test_the_dir_given_wins_over_the_environment_which_wins_over_the_default(tmp_path):
    env = {"ELASTICITY_DATA_DIR": str(tmp_path / "env")}
    assert DataDir.resolve(tmp_path / "given", env).root == tmp_path / "given"
    assert DataDir.resolve(None, env).root == tmp_path / "env"
    assert DataDir.resolve(None, {}).root == Path(".elasticity")
    assert DataDir.resolve(None, {"ELASTICITY_DATA_DIR": ""}).root == Path(".elasticity")


def test_each_store_has_its_file(tmp_path):
    where = DataDir(tmp_path)
    names = (where.main.name, where.replay.name, where.simulate.name)
    assert names == ("elasticity.sqlite3", "replay.sqlite3", "simulate.sqlite3")
    assert where.compare("base").name == "compare-base.sqlite3"
    with pytest.raises(ValueError, match="unknown compare side"):
        where.compare("left")


def test_existing_stores_lists_only_files_that_exist(tmp_path):
    where = DataDir(tmp_path)
    assert where.existing_stores() == []
    where.replay.write_bytes(b"")
    assert where.existing_stores() == [("replay", where.replay)]
    assert where.existing_stores("main") == []
    elsewhere = tmp_path / "copy.sqlite3"
    elsewhere.write_bytes(b"")
    assert where.existing_stores(str(elsewhere)) == [("copy.sqlite3", elsewhere)]
    assert where.existing_stores(str(tmp_path / "missing.sqlite3")) == []


def test_a_temporary_dir_is_new_and_empty():
    where = DataDir.temporary("elasticity-test-")
    try:
        assert where.root.is_dir() and not any(where.root.iterdir())
    finally:
        where.root.rmdir()
