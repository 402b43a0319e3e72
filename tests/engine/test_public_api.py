"""`from engine import …`: the public API names resolve to the objects their modules define."""

import importlib

import pytest

import engine


@pytest.mark.parametrize("name", engine.__all__)
def test_every_public_name_is_its_modules_object(name):
    module = importlib.import_module(engine._PUBLIC[name])
    assert getattr(engine, name) is getattr(module, name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Solvr'"):
        engine.Solvr  # noqa: B018
