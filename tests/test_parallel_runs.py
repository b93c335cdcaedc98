"""How `make test` splits the suite over several pytest processes (tests/conftest.py): units of
work are modules, the object store's tests one more, handed out costliest first."""

from __future__ import annotations

import pytest

from tests.conftest import OBJECT_STORE_GROUP, cost_of, group_of


def test_a_module_is_a_unit_of_work_and_the_object_stores_tests_are_one() -> None:
    assert group_of("tests/test_names.py::test_cas_storm") == "tests/test_names.py"
    assert group_of("tests/test_wire.py::test_x[NameRecord-body0]") == "tests/test_wire.py"
    for nodeid in (
        "tests/test_s3_store.py::test_check",
        "tests/test_multinode_s3.py::test_any_node_serves_what_another_stored",
        "tests/test_store_conformance.py::test_empty_blob[s3]",
    ):
        assert group_of(nodeid) == OBJECT_STORE_GROUP
    conformance_on_files = "tests/test_store_conformance.py::test_empty_blob[file]"
    assert group_of(conformance_on_files) == "tests/test_store_conformance.py"


def test_the_collection_runs_unit_by_unit_costliest_first(request: pytest.FixtureRequest) -> None:
    """Each unit's tests are adjacent (a module's servers start once, in one process) and the
    costliest units (casd processes, a slow test) come first, whatever was selected."""
    units: list[str] = []
    cost: dict[str, float] = {}
    for item in request.session.items:
        unit = group_of(item.nodeid)
        if not units or units[-1] != unit:
            assert unit not in units, f"{unit} is split"
            units.append(unit)
        cost[unit] = cost.get(unit, 0.0) + cost_of(item)
    in_order = [cost[unit] for unit in units]
    assert in_order == sorted(in_order, reverse=True)
