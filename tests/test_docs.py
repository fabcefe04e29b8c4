"""The examples in sklens's docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest

import pytest

import sklens.result


@pytest.mark.parametrize("module", [sklens.result])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
