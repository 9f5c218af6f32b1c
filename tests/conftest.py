"""Shared fixtures: bundled datasets loaded once per session (tests must not modify them)."""

import pytest

import bayeshlm as bh


@pytest.fixture(scope="session")
def hsb():
    return bh.datasets.load("hsb")


@pytest.fixture(scope="session")
def egsingle():
    return bh.datasets.load("egsingle")


@pytest.fixture(scope="session")
def scotssec():
    return bh.datasets.load("scotssec")


@pytest.fixture(scope="session")
def sleepstudy():
    return bh.datasets.load("sleepstudy")
