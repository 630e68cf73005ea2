"""What the API accepts as a key and as an event time: the server's checks and the OpenAPI schema
stating the same rules (so that a client generated from the schema and the server agree).

- ``Key``: a string of 1-128 characters with no control character (C0, DEL, C1), no unpaired
  surrogate and not only white space (stripped), or an integer within +-(2^53 - 1), exact in every
  JSON parser (larger ids travel as strings). ``500.0`` counts as the integer 500.
- ``EventTime``: an RFC 3339 date-time with its UTC offset whose year as written is 1971-2261, so no
  offset can move it outside [1970-01-01, 2262-04-11) in UTC (what the event log and pandas
  ``datetime64[ns]`` readers of it can represent). It arrives converted to UTC; fractions beyond
  microseconds (up to nanoseconds) are truncated.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BeforeValidator, StrictInt, StrictStr, WithJsonSchema

from serving.store import key_problem

MAX_KEY_CHARS = 128
# Event times the log and every reader of it (pandas datetime64[ns] ends in 2262) can represent.
EVENT_TS_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
EVENT_TS_MAX = dt.datetime(2262, 4, 11, tzinfo=dt.timezone.utc)
# The same in the OpenAPI schema (a client's generator and the server agree on what is valid): the year
# as written in 1971-2261, so that no UTC offset can move it out of the range above.
EVENT_TS_PATTERN = (r"^(?:197[1-9]|19[89]\d|20\d\d|21\d\d|22[0-5]\d|226[01])-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
                    r"[Tt](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$")
# Keys: 1-128 characters, no control characters (C0, DEL, C1), not only white space.
KEY_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
# Integer keys: exact in every JSON parser (IEEE doubles); larger ids travel as strings.
INT_KEY_MIN, INT_KEY_MAX = -(2**53 - 1), 2**53 - 1


def integral(v: Any) -> Any:
    """``500.0`` -> ``500``: JSON (and JSON Schema) do not tell an integral float from an integer."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def clean_key(v: str | int) -> str:
    if isinstance(v, int) and not INT_KEY_MIN <= v <= INT_KEY_MAX:
        raise ValueError(f"an integer key must be within +-{INT_KEY_MAX} (send a larger id as a string)")
    raw = str(v)
    if len(raw) > MAX_KEY_CHARS:
        raise ValueError(f"must be at most {MAX_KEY_CHARS} characters (got {len(raw)})")
    problem = key_problem(raw)
    if problem:
        raise ValueError(problem)
    s = raw.strip()
    if not s or not re.fullmatch(KEY_PATTERN, raw):
        raise ValueError("must not be empty or only white space")
    return s


def _event_time_text(v: Any) -> Any:
    if v is None or (isinstance(v, str) and re.fullmatch(EVENT_TS_PATTERN, v)):
        return v
    raise ValueError("must be an RFC 3339 date-time with its UTC offset, years 1971-2261 "
                     "(e.g. 2026-01-02T03:04:05Z)")


def _utc_event_time(ts: dt.datetime) -> dt.datetime:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    try:
        utc = ts.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError(f"{ts.isoformat()} is outside the years 1-9999 once its UTC offset is applied") from None
    if not EVENT_TS_MIN <= utc < EVENT_TS_MAX:
        raise ValueError(f"{utc.isoformat()} (UTC) is outside [{EVENT_TS_MIN.date()}, {EVENT_TS_MAX.date()})")
    return utc


# The checks are ``clean_key``'s (its messages name the problem); the schema states the same rules.
Key = Annotated[Union[StrictStr, StrictInt], BeforeValidator(integral), AfterValidator(clean_key),
                WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS,
                                           "pattern": KEY_PATTERN},
                                          {"type": "integer", "minimum": INT_KEY_MIN, "maximum": INT_KEY_MAX}],
                                "description": "a raw storefront key: a string (1-128 characters, no control "
                                               "characters, not only white space) or an integer within +-(2^53-1)"})]
EventTime = Annotated[dt.datetime, BeforeValidator(_event_time_text), AfterValidator(_utc_event_time),
                      WithJsonSchema({"type": "string", "format": "date-time", "pattern": EVENT_TS_PATTERN})]
