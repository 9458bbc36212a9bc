"""KVSharingPlan: constructors, validation, properties and (de)serialisation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import KVSharingPlan


@pytest.mark.parametrize(
    ("plan", "kv_source", "n_kv_heads"),
    [
        (KVSharingPlan.mha(4, 4), (0, 1, 2, 3), 4),
        (KVSharingPlan.gqa(3, 8, 2), (0, 1, 2), 2),
        (KVSharingPlan.mqa(3, 8), (0, 1, 2), 1),
        (KVSharingPlan.cla(6, 4, 2, 2), (0, 0, 2, 2, 4, 4), 2),
        (KVSharingPlan.cla(5, 4, 1, 3), (0, 0, 0, 3, 3), 1),
        (KVSharingPlan.mlkv(9, 8, 2, 3), (0, 0, 0, 3, 3, 3, 6, 6, 6), 2),
        (KVSharingPlan.mlkv(12, 12, 1, 2), (0,) * 6 + (6,) * 6, 1),
        (KVSharingPlan.mlkv(5, 4, 2, 1), (0,) * 5, 2),
        (KVSharingPlan.mlkv(4, 4, 2, 3), (0, 1, 2, 2), 2),
    ],
)
def test_constructors_build_the_expected_sources(plan, kv_source, n_kv_heads):
    assert plan.kv_source == kv_source
    assert plan.n_kv_heads == n_kv_heads
    assert plan.owners == tuple(i for i, s in enumerate(kv_source) if s == i)


def test_reference_plan_is_9_layers_8_heads_2_kv_heads_every_3_layers():
    plan = KVSharingPlan.reference()
    assert (plan.n_layers, plan.n_heads, plan.n_kv_heads) == (9, 8, 2)
    assert plan.owners == (0, 3, 6)
    assert plan.n_kv_layers == 3
    assert plan.total_kv_heads == 6
    assert plan == KVSharingPlan.cla(9, 8, 2, 3)  # MLKV-3 and CLA-3 coincide at depth 9


def test_str_names_the_kind_and_the_owners():
    text = str(KVSharingPlan.reference())
    assert text.startswith("MLKV-3")
    assert "[0, 3, 6]" in text and "6 KV heads in total" in text
    assert str(KVSharingPlan.cla(10, 4, 2, 3)).startswith("CLA-3")
    assert str(KVSharingPlan.mha(2, 2)).startswith("MHA")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KVSharingPlan((), 4, 4), "at least one layer"),
        (lambda: KVSharingPlan((0, 2, 2), 4, 4), r"kv_source\[1\] = 2"),  # points forward
        (lambda: KVSharingPlan((1, 1), 4, 4), r"kv_source\[0\] = 1"),  # layer 0 not an owner
        (lambda: KVSharingPlan((0, 0, 1), 4, 4), "not a KV owner"),  # source is a sharer
        (lambda: KVSharingPlan((0, -1), 4, 4), r"kv_source\[1\] = -1"),
        (lambda: KVSharingPlan((0,), 0, 1), "n_heads"),
        (lambda: KVSharingPlan((0,), 8, 3), "n_kv_heads must divide"),
        (lambda: KVSharingPlan((0,), 4, 8), "n_kv_heads must divide"),
        (lambda: KVSharingPlan.mha(0, 4), "n_layers"),
        (lambda: KVSharingPlan.cla(4, 4, 2, 0), "share_every"),
        (lambda: KVSharingPlan.mlkv(4, 4, 2, 5), "n_kv_layers must be <= n_layers"),
        (lambda: KVSharingPlan.mlkv(4, 4, 2, 0), "n_kv_layers"),
    ],
)
def test_invalid_plans_raise_a_clear_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_plans_are_frozen_and_hashable():
    plan = KVSharingPlan.reference()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.n_heads = 4  # type: ignore[misc]
    assert len({plan, KVSharingPlan.reference()}) == 1


@pytest.mark.parametrize(
    "plan",
    [
        KVSharingPlan.mha(3, 4),
        KVSharingPlan.gqa(3, 4, 2),
        KVSharingPlan.mqa(3, 4),
        KVSharingPlan.cla(10, 4, 2, 3),
        KVSharingPlan.reference(),
        KVSharingPlan.mlkv(6, 4, 1, 1),
        KVSharingPlan((0, 0, 2, 2, 2, 5), 4, 2),  # custom
    ],
)
def test_to_dict_round_trips(plan):
    spec = plan.to_dict()
    assert spec["kind"] == plan.kind
    assert KVSharingPlan.from_dict(spec) == plan


def test_from_dict_accepts_yaml_style_specs():
    assert KVSharingPlan.from_dict({"kind": "reference"}) == KVSharingPlan.reference()
    spec = {"kind": "MLKV", "n_layers": 9, "n_heads": 8, "n_kv_heads": 2, "n_kv_layers": 3}
    assert KVSharingPlan.from_dict(spec) == KVSharingPlan.reference()
    assert KVSharingPlan.reference().to_dict() == {**spec, "kind": "mlkv"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "sparse", "n_layers": 2}, "unknown kind 'sparse'"),
        ({"n_layers": 2}, "'kind' key"),
        ({"kind": "mha", "n_layers": 2}, r"missing \['n_heads'\]"),
        ({"kind": "mqa", "n_layers": 2, "n_heads": 2, "n_kv_heads": 1}, "unexpected"),
    ],
)
def test_from_dict_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        KVSharingPlan.from_dict(spec)


@settings(max_examples=40, deadline=None)
@given(
    n_layers=st.integers(1, 16),
    data=st.data(),
)
def test_mlkv_owners_are_spread_evenly(n_layers, data):
    m = data.draw(st.integers(1, n_layers))
    plan = KVSharingPlan.mlkv(n_layers, 4, 2, m)
    owners = plan.owners
    assert owners[0] == 0 and plan.n_kv_layers == m
    gaps = [b - a for a, b in zip(owners, (*owners[1:], n_layers), strict=True)]
    assert max(gaps) - min(gaps) <= 1  # evenly spread
    assert all(plan.kv_source[i] == max(o for o in owners if o <= i) for i in range(n_layers))
    assert KVSharingPlan.from_dict(plan.to_dict()) == plan


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 6), min_size=1, max_size=6))
def test_any_source_tuple_is_either_rejected_or_a_valid_plan(src):
    try:
        plan = KVSharingPlan(tuple(src), 4, 2)
    except ValueError:
        ok = all(0 <= s <= i for i, s in enumerate(src)) and all(src[s] == s for s in src)
        assert not ok
        return
    for i, s in enumerate(plan.kv_source):
        assert 0 <= s <= i and s in plan.owners
    assert KVSharingPlan.from_dict(plan.to_dict()) == plan
