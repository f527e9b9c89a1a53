"""Query parameters of the monitor's routes, from raw query strings as Starlette decodes them."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from monitoring.queries import (
    BadQuery,
    ModelQuery,
    accepts_gzip,
    parse_drift_query,
    parse_report_query,
    parse_rows_query,
)


def drift(query: str) -> ModelQuery:
    return parse_drift_query(QueryParams(query).multi_items())


def report(query: str) -> ModelQuery:
    return parse_report_query(QueryParams(query).multi_items())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ModelQuery(None, None)),
        ("windows=1", ModelQuery(None, 1)),
        ("windows=100000", ModelQuery(None, 100_000)),
        ("windows=007", ModelQuery(None, 7)),
        ("version=1&windows=5", ModelQuery("1", 5)),
        ("version=v2.1_rc-3", ModelQuery("v2.1_rc-3", None)),
        ("version=" + "a" * 128, ModelQuery("a" * 128, None)),
    ],
)
def test_good_drift_queries(query: str, expected: ModelQuery) -> None:
    assert drift(query) == expected


WINDOWS_MESSAGE = "windows must be a whole number from 1 to 100000 (ASCII digits), got "


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("windows=%C2%B2", "'²'"),  # str.isdigit() says yes to a superscript two
        ("windows=%D9%A3", "'٣'"),  # an Arabic-Indic three
        ("windows=0", "'0'"),
        ("windows=-1", "'-1'"),
        ("windows=1.5", "'1.5'"),
        ("windows=1e3", "'1e3'"),
        ("windows=%205", "' 5'"),
        ("windows=+5", "' 5'"),  # '+' decodes to a space
        ("windows=5%0A", "'5\\n'"),
        ("windows=", "''"),
        ("windows", "''"),
        ("windows=100001", "'100001'"),
        ("windows=0000001", "'0000001'"),
        ("windows=%FF", "'\ufffd'"),  # not UTF-8: decoded as the replacement character
        ("windows=" + "9" * 50, "'" + "9" * 40 + "'..."),
    ],
)
def test_bad_windows(query: str, shown: str) -> None:
    with pytest.raises(BadQuery) as info:
        drift(query)
    assert str(info.value) == WINDOWS_MESSAGE + shown


VERSION_MESSAGE = ("version must be a version label (a letter or digit, then letters, digits, "
                   "'.', '_', '-'; at most 128 characters), got ")


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("version=", "''"),
        ("version=1%0A", "'1\\n'"),
        ("version=.hidden", "'.hidden'"),
        ("version=..%2Fetc", "'../etc'"),
        ("version=1%202", "'1 2'"),
        ("version=%C2%B2", "'²'"),
        ("version=" + "a" * 129, "'" + "a" * 40 + "'..."),
    ],
)
def test_bad_versions(query: str, shown: str) -> None:
    with pytest.raises(BadQuery) as info:
        drift(query)
    assert str(info.value) == VERSION_MESSAGE + shown
    with pytest.raises(BadQuery):
        report(query)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("windows=1&windows=2", "query parameter 'windows' is given more than once"),
        ("version=1&version=1", "query parameter 'version' is given more than once"),
        ("colour=red", "unknown query parameter(s) 'colour': this route takes version, windows"),
        ("window=5&version=1&b&a=1", "unknown query parameter(s) 'a', 'b', 'window': this route "
         "takes version, windows"),
        ("a&b&c&d&e&f&g&a", "unknown query parameter(s) 'a', 'b', 'c', 'd', 'e' and 2 more: this "
         "route takes version, windows"),
        ("x" * 60 + "=1", "unknown query parameter(s) '" + "x" * 40 + "'...: this route takes "
         "version, windows"),
    ],
)
def test_repeated_and_unknown_parameters(query: str, message: str) -> None:
    with pytest.raises(BadQuery) as info:
        drift(query)
    assert str(info.value) == message


def test_the_report_takes_a_version_only() -> None:
    assert report("version=3") == ModelQuery("3", None)
    assert report("") == ModelQuery(None, None)
    with pytest.raises(BadQuery, match=r"^unknown query parameter\(s\) 'windows': this route "
                       r"takes version$"):
        report("windows=2")


def rows(query: str) -> ModelQuery:
    return parse_rows_query(QueryParams(query).multi_items())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ModelQuery(None, None)),
        ("labelled=all", ModelQuery(None, None)),
        ("labelled=only", ModelQuery(None, None, labelled_only=True)),
        ("version=2&labelled=only", ModelQuery("2", None, labelled_only=True)),
    ],
)
def test_good_rows_queries(query: str, expected: ModelQuery) -> None:
    assert rows(query) == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("labelled=ONLY", "labelled must be 'all' or 'only', got 'ONLY'"),
        ("labelled=", "labelled must be 'all' or 'only', got ''"),
        ("labelled=true", "labelled must be 'all' or 'only', got 'true'"),
        ("labelled=1", "labelled must be 'all' or 'only', got '1'"),
        ("labelled=" + "o" * 50, "labelled must be 'all' or 'only', got '" + "o" * 40 + "'..."),
        ("labelled=only&labelled=all", "query parameter 'labelled' is given more than once"),
        ("labels=only", "unknown query parameter(s) 'labels': this route takes labelled, version"),
        ("windows=3", "unknown query parameter(s) 'windows': this route takes labelled, version"),
        ("version=..", "version must be a version label (a letter or digit, then letters, "
         "digits, '.', '_', '-'; at most 128 characters), got '..'"),
    ],
)
def test_bad_rows_queries(query: str, message: str) -> None:
    """Each bad query of the rows route is a BadQuery (HTTP 400) with exactly this message."""
    with pytest.raises(BadQuery) as info:
        rows(query)
    assert str(info.value) == message


def test_only_the_rows_route_takes_labelled() -> None:
    for parse in (drift, report):
        with pytest.raises(BadQuery, match="unknown query parameter"):
            parse("labelled=only")


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("gzip", True),
        ("GZip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=0, *", False),  # refused by name: the wildcard does not bring it back
        ("*;q=0", False),
        ("deflate, *;q=0.1", True),
        ("gzip;q=nonsense", False),
    ],
)
def test_accepts_gzip(header: str | None, gzip: bool) -> None:
    assert accepts_gzip(header) is gzip
