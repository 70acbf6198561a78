"""Property tests (Hypothesis) over the filter language and the config loader, quick enough for CI.

The same properties as the atheris harnesses in tests/fuzz/ (see tests/fuzz/common.py): any input
parses/loads or raises FilterError/ConfigError, never another exception; a parsed filter selects
the same records through its Python predicate and its SQL form. Inputs are built from the
language's own words (so most of them parse) mixed with arbitrary text.

The ``test_known_*`` cases reproduce the bugs the fuzzers found (F1-F5, C1 in bench/RESULTS.md);
all are fixed, so these are plain regression tests now (``common.KNOWN`` is empty; it was what the
fuzzers used to keep going past them).
"""
from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import config
from fuzz import common

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def conn():
    c = common.filter_db()
    yield c
    c.close()


# -- filters --------------------------------------------------------------------------------------

words = st.sampled_from(common.FILTER_WORDS)
junk = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
numbers = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)).map(str)
filter_texts = st.one_of(
    st.lists(st.one_of(words, words, words, numbers, junk), min_size=1, max_size=12).map(" ".join),
    st.text(max_size=40),
)


@SETTINGS
@given(text=filter_texts)
def test_filter_parses_or_filter_error_and_both_forms_agree(conn, text):
    common.check_filter(text, conn, tolerate_known=False)


@SETTINGS
@given(a=st.sampled_from(common.SEED_FILTERS), b=st.sampled_from(common.SEED_FILTERS),
       op=st.sampled_from(["and", "or", "&&", "||"]), neg=st.booleans())
def test_filter_combinations_agree(conn, a, b, op, neg):
    text = f"({a}) {op} {'not ' if neg else ''}({b})"
    assert common.check_filter(text, conn), text


# -- config ---------------------------------------------------------------------------------------

values = st.one_of(st.integers(-2**70, 2**70), st.floats(), st.booleans(), st.text(max_size=20),
                   st.lists(st.text(max_size=8), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                              st.integers(), max_size=2))


def section_values(name):
    keys = list(common.CONFIG_KEYS.get(name, {}))
    key = st.sampled_from(keys) if keys else st.text(max_size=8)
    return st.dictionaries(st.one_of(key, key, key, st.text(max_size=8)), values, max_size=6)


config_dicts = st.dictionaries(st.sampled_from([*common.CONFIG_KEYS, "bogus"]), st.just(None), max_size=6).flatmap(
    lambda secs: st.fixed_dictionaries({s: section_values(s) for s in secs}))


@SETTINGS
@given(data=config_dicts)
def test_config_from_dict_loads_or_config_error(data):
    common.check_config_dict(data)


@SETTINGS
@given(data=config_dicts)
def test_config_file_loads_or_config_error(data):
    scratch = common.ConfigFile()
    try:
        try:
            text = common.toml_text(data)
        except (TypeError, ValueError):
            return
        common.check_config_bytes(text.encode("utf-8", "surrogatepass"), scratch, tolerate_known=False)
    finally:
        scratch.close()


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_config_arbitrary_bytes_load_or_config_error(raw):
    scratch = common.ConfigFile()
    try:
        common.check_config_bytes(raw, scratch, tolerate_known=False)
    finally:
        scratch.close()


def test_valid_config_values_load():
    """A config using every key with a valid value loads and round-trips."""
    text = "".join(common.SEED_CONFIGS[:8])
    scratch = common.ConfigFile()
    try:
        assert common.check_config_bytes(text.encode(), scratch)
    finally:
        scratch.close()


# -- known bugs (found by the fuzzers; see tests/fuzz/common.py KNOWN) ------------------------------

def _run_filter(conn, text):
    common.check_filter(text, conn)


def test_known_filter_int_overflow(conn):
    _run_filter(conn, "pkts gt 99999999999999999999")


def test_known_filter_surrogate(conn):
    _run_filter(conn, "srcid \udcff")


def test_known_filter_long_or_chain(conn):
    _run_filter(conn, " or ".join(f"host 10.0.0.{i}" for i in range(100)))


def test_known_filter_deep_parentheses(conn):
    _run_filter(conn, "(" * 1000 + "tcp" + ")" * 1000)


def test_known_filter_port_name_nul(conn):
    _run_filter(conn, "port h\x00ttp")    # fixed: FilterError, check_filter returns, XPASS


def test_known_config_not_utf8(tmp_path):
    path = tmp_path / "flowtap.toml"
    path.write_bytes(b"[sensor]\nid = \"\xff\"\n")
    with pytest.raises(config.ConfigError):
        config.load(path)
