"""The spec text, parsed in one module: terms, the temporal split, the boundary in time, the SR scale."""

import pytest

from engine.errors import InputError
from engine.operators.spec import Term, join, parse, split_temporal, sr_scale, time_boundary, with_time_boundary


def test_terms_in_the_order_applied_and_back():
    spec = "temporal:uniform:7:replicate+sr:4+inpaint:file=mask.png"
    terms = parse(spec)
    assert terms == [Term("temporal", "uniform:7:replicate"), Term("sr", "4"), Term("inpaint", "file=mask.png")]
    assert join(terms) == spec and terms[0].fields == ["uniform", "7", "replicate"]


def test_temporal_terms_apart_from_the_frame_local_ones():
    temporal, frame_local = split_temporal("sr:2+temporal:gaussian:1.5+blur:gaussian:2.0:13")
    assert [str(t) for t in temporal] == ["temporal:gaussian:1.5"]
    assert join(frame_local) == "sr:2+blur:gaussian:2.0:13"


@pytest.mark.parametrize("spec, expected", [
    ("temporal:uniform:7", "temporal:uniform:7:replicate"),
    ("temporal:uniform:7:circular", "temporal:uniform:7:circular"),                 # named: kept
    ("temporal:kernel:0.2,0.6,0.2+sr:2", "temporal:kernel:0.2,0.6,0.2:replicate+sr:2"),
    ("temporal:uniform", "temporal:uniform"),                                       # malformed: left to the registry
    ("sr:4", "sr:4"),
])
def test_a_boundary_in_time_for_terms_that_name_none(spec, expected):
    assert with_time_boundary(spec, "replicate") == expected


def test_the_boundary_a_term_names():
    assert time_boundary(Term("temporal", "uniform:7:zero")) == "zero"
    assert time_boundary(Term("temporal", "uniform:7")) is None and time_boundary(Term("sr", "2")) is None


def test_the_sr_scale_is_the_product_of_the_factors():
    assert sr_scale("temporal:uniform:3+sr:2+sr:3") == 6 and sr_scale("temporal:uniform:3") == 1
    with pytest.raises(InputError, match="sr:x"):
        sr_scale("sr:x")


@pytest.mark.parametrize("spec", ["", "  ", "sr:2++sr:2", None])
def test_empty_specs_and_terms_are_refused(spec):
    with pytest.raises(InputError, match="empty"):
        parse(spec)
