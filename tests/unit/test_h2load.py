"""Reading h2load's summary (load_tests.h2load): the measured duration's requests, failures as
errors, and a clear error when h2load printed none."""

import pytest

from load_tests.h2load import H2loadError, grpc_frame, parse

SUMMARY = """finished in 5.00s, 45.33 req/s, 5.00KB/s
requests: 140 total, 140 started, 140 done, 136 succeeded, 4 failed, 1 errored, 0 timeout
status codes: 136 2xx, 0 3xx, 3 4xx, 0 5xx
traffic: 15.01KB (15368) total, 17.97KB (18400) headers (space savings 0.00%), 456B (456) data
                     min         max         mean         sd        +/- sd
time for request:    43.27ms     44.66ms     43.99ms       149us    86.76%
"""


def test_the_summary_counts_the_measured_duration_alone():
    result = parse(SUMMARY, measure_s=3)
    assert (result.requests, result.errors, result.seconds) == (136, 4, 3)
    assert result.rps == pytest.approx(45.33, abs=0.01)  # h2load's own figure
    assert result.mean_ms == 43.99


def test_a_mean_in_microseconds_is_read_in_milliseconds():
    result = parse(SUMMARY.replace("43.99ms", "812.5us"), measure_s=3)
    assert result.mean_ms == pytest.approx(0.8125)


def test_no_summary_is_an_error_that_shows_the_output():
    with pytest.raises(H2loadError, match="connect failed"):
        parse("", 3, stderr="client could not connect to host: connect failed")


def test_a_grpc_frame_is_flag_length_message():
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
