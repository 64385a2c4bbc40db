"""The webhook contract: every shape Talkable sends becomes one GenerateParams, or a 4xx that
names each bad field and never repeats a secret."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from pydantic import ValidationError
from yarl import URL

from models.forms import FormError, decode_query, nest
from models.params import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    GenerateParams,
    ParamsError,
    UsageLimit,
    completion_event_number,
    from_mapping,
    parse_request,
    person_key,
    person_keys,
    request_fingerprint,
    site_named,
    trigger_met,
)
from models.values import SITE_SLUG_RULE
from streams.ingress import HTTP_STATUS
from tests.support import form_pairs, scalar, with_changes

FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

TALKABLE_KEY = "tk_live_TALKABLE_SECRET_0001"
OPENAI_KEY = "sk-OPENAI-SECRET-0001"
WEBHOOK_KEY = "whk_WEBHOOK_SECRET_0001"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# The seed page's params as Liquid renders them: every value a string.
SEED: dict[str, Any] = {
    "site": "acme-store",
    "email": "Alice@Example.com",
    "api_key": TALKABLE_KEY,
    "event_number": "order-42-complete",
    "openai": {
        "messages": [
            {"role": "system", "content": "You write short, funny verses."},
            {
                "role": "user",
                "content": "There once was a user named Alice, who bought a kayak & paddle, "
                "now create a humorous verse with this information.",
            },
        ],
        "api_key": OPENAI_KEY,
        "model": "gpt-4o-mini",
        "max_tokens": "150",
        "temperature": "0.7",
        "stop": ["\n\n", "END"],
        "user": "alice-42",
    },
    "usage_limit": {
        "amount": "3",
        "duration_in_seconds": "3600",
        "start_time": "1700000000",
        "current_time": "1700000100",
        "current_usage_amount": "0",
    },
    "trigger_criteria": "true",
}


def status_of(error: ParamsError) -> int:
    """The HTTP answer the ingress gives for the error's problem."""
    return HTTP_STATUS[error.problem]


def seed(**changes: Any) -> dict[str, Any]:
    """A deep copy of SEED with ``a__b`` path changes; ``...`` deletes."""
    return with_changes(SEED, **changes)


# --- encoders: the same params in every shape -----------------------------------------------


def form_body(tree: dict[str, Any], style: str = "brackets") -> bytes:
    return urlencode(form_pairs(tree, style)).encode()


def raw_form_body(tree: dict[str, Any]) -> bytes:
    """Brackets left unencoded, as curl and many templates send them."""
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in form_pairs(tree)).encode()


def multipart_body(tree: dict[str, Any], boundary: str = "XyZ-boundary-42") -> tuple[str, bytes]:
    chunks = []
    for name, value in form_pairs(tree):
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    body = "".join(chunks) + f"--{boundary}--\r\n"
    return f"multipart/form-data; boundary={boundary}", body.encode()


def without(tree: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in tree.items() if k not in keys}


TALKABLE_EVENT = {
    "person": {"email": "alice@example.com", "first_name": "Alice"},
    "origin": {"event_category": "generate_text", "event_number": "order-42"},
}


def shapes(tree: dict[str, Any]) -> dict[str, tuple[str, bytes, Any]]:
    """(content type, body, query) for each way Talkable can deliver ``tree``."""
    typed = json.loads(json.dumps(tree))
    typed["openai"]["max_tokens"] = int(tree["openai"]["max_tokens"])
    typed["openai"]["temperature"] = float(tree["openai"]["temperature"])
    typed["usage_limit"] = {k: int(v) for k, v in tree["usage_limit"].items()}
    mp_type, mp_body = multipart_body(tree)
    envelope = {"key": WEBHOOK_KEY, "site": tree["site"], "type": "event_web_hook"}
    params = without(tree, "site")
    query_part = {"site": tree["site"], "usage_limit": tree["usage_limit"]}
    return {
        "json": (JSON, json.dumps(tree).encode(), None),
        "json with typed numbers": (
            "application/json; charset=utf-8",
            json.dumps(typed).encode(),
            None,
        ),
        "json without content type": ("", json.dumps(tree).encode(), None),
        "form []": (FORM, form_body(tree), None),
        "form [0]": (FORM, form_body(tree, "indexed"), None),
        "form raw brackets": (FORM + "; charset=UTF-8", raw_form_body(tree), None),
        "multipart": (mp_type, mp_body, None),
        "legacy form": (
            FORM,
            urlencode(
                {**envelope, "extras": json.dumps(params), "payload": json.dumps(TALKABLE_EVENT)}
            ).encode(),
            None,
        ),
        "legacy json": (
            JSON,
            json.dumps({**envelope, "extras": params, "payload": TALKABLE_EVENT}).encode(),
            None,
        ),
        "legacy json, strings, split": (
            JSON,
            json.dumps(
                {
                    **envelope,
                    "extras": json.dumps(without(params, "usage_limit")),
                    "payload": json.dumps({**TALKABLE_EVENT, "usage_limit": tree["usage_limit"]}),
                }
            ).encode(),
            None,
        ),
        # a dict of lists loses the order between names, so arrays of hashes need indices
        "query only (lists)": ("", b"", parse_qs(form_body(tree, "indexed").decode())),
        "query under json": (
            JSON,
            json.dumps(without(tree, *query_part)).encode(),
            parse_qs(urlencode(form_pairs(query_part))),
        ),
        "query (flat) under form": (
            FORM,
            form_body(without(tree, "site", "event_number")),
            {"site": tree["site"], "event_number": tree["event_number"]},
        ),
        # as the ingress hands it: the raw query string, every pair in order
        "raw query string": ("", b"", form_body(tree).decode()),
        "raw query string under json": (
            JSON,
            json.dumps(without(tree, *query_part)).encode(),
            urlencode(form_pairs(query_part)),
        ),
    }


SHAPES = shapes(SEED)


def test_the_seed_parses_into_the_documented_meaning() -> None:
    params = parse_request(JSON, json.dumps(SEED).encode())

    assert params.site == "acme-store"
    assert params.email == "alice@example.com"
    assert params.person == person_key("acme-store", "alice@example.com")
    assert params.api_key.get_secret_value() == TALKABLE_KEY
    assert params.openai.api_key.get_secret_value() == OPENAI_KEY
    assert [m.role for m in params.openai.messages] == ["system", "user"]
    assert params.openai.model == "gpt-4o-mini"
    assert params.openai.max_tokens == 150
    assert params.openai.passthrough() == {
        "temperature": 0.7,
        "stop": ["\n\n", "END"],
        "user": "alice-42",
    }
    assert params.usage_limit is not None
    assert params.usage_limit.model_dump() == {
        "amount": 3,
        "duration_in_seconds": 3600,
        "start_time": 1700000000,
        "current_time": 1700000100,
        "current_usage_amount": 0,
    }
    assert params.trigger_criteria == "true"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_gives_the_same_params_and_fingerprint(shape: str) -> None:
    expected = parse_request(JSON, json.dumps(SEED).encode())
    content_type, body, query = SHAPES[shape]

    params = parse_request(content_type, body, query)

    assert params == expected
    assert params.openai.passthrough() == expected.openai.passthrough()
    assert request_fingerprint(params) == request_fingerprint(expected)


def test_defaults_apply_when_optional_params_are_left_out() -> None:
    minimal = without(seed(), "event_number", "usage_limit", "trigger_criteria")
    minimal["openai"] = {"messages": [{"role": "user", "content": "hi"}], "api_key": OPENAI_KEY}

    params = from_mapping(minimal)

    assert params.openai.model == DEFAULT_MODEL
    assert params.openai.max_tokens == DEFAULT_MAX_TOKENS
    assert params.openai.passthrough() == {}
    assert params.usage_limit is None
    assert params.event_number is None
    assert params.trigger_criteria is None


# --- Rails (Rack) nesting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "tree"),
    [
        ([("a", "1"), ("a", "1")], {"a": "1"}),  # the same value again: Rack's, taken once
        ([("a[]", "1"), ("a[]", "2")], {"a": ["1", "2"]}),
        ([("a[b][c]", "1")], {"a": {"b": {"c": "1"}}}),
        (
            [("m[][role]", "system"), ("m[][content]", "x"), ("m[][role]", "user")],
            {"m": [{"role": "system", "content": "x"}, {"role": "user"}]},
        ),
        (  # a repeated key starts the next element, even when the previous lacks a key
            [("m[][role]", "user"), ("m[][role]", "user"), ("m[][content]", "c")],
            {"m": [{"role": "user"}, {"role": "user", "content": "c"}]},
        ),
        (
            [("t[][f][name]", "n1"), ("t[][f][desc]", "d1"), ("t[][f][name]", "n2")],
            {"t": [{"f": {"name": "n1", "desc": "d1"}}, {"f": {"name": "n2"}}]},
        ),
        ([("a[][]", "1"), ("a[][]", "2")], {"a": [["1"], ["2"]]}),
        (
            [("m[1][x]", "b"), ("m[0][x]", "a"), ("m[10][x]", "c")],
            {"m": [{"x": "a"}, {"x": "b"}, {"x": "c"}]},
        ),
        ([("o[logit_bias][50256]", "-100")], {"o": {"logit_bias": {"50256": "-100"}}}),
        ([("o[metadata][7]", "x")], {"o": {"metadata": {"7": "x"}}}),
        ([("x[", "1"), ("[]", "2"), ("", "3")], {"x[": "1"}),
        ([("a]]", "1")], {"a": "1"}),
    ],
)
def test_form_nesting_follows_rack(pairs: list[tuple[str, str]], tree: dict[str, Any]) -> None:
    assert nest(pairs) == tree


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("a[b]", "2")],
        [("a[b]", "2"), ("a", "1")],
        [("a[]", "1"), ("a[b]", "2")],
        [("a[b]", "1"), ("a[]", "2")],
        [("a[]", "1"), ("a", "2")],
        [("a" + "[b]" * 40, "1")],
        # Rack keeps the last ({"a": "2"}); a scalar given twice differently is a mistake
        [("a", "1"), ("a", "2")],
        [("a[b]", "1"), ("a[b]", "2")],
    ],
)
def test_conflicting_or_too_deep_names_are_refused(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(FormError):
        nest(pairs)


def test_a_conflict_is_a_400_naming_the_field() -> None:
    body = form_body(seed()) + b"&openai[messages]=oops"

    with pytest.raises(ParamsError) as caught:
        parse_request(FORM, body)

    assert status_of(caught.value) == 400
    assert [e.field for e in caught.value.errors] == ["openai.messages"]


CARD = "4111111111111111"


def messages_json(*messages: dict[str, str]) -> bytes:
    return json.dumps(seed(openai__messages=list(messages))).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "query", "field"),
    [
        # a number is repeated only as a position in one of the contract's lists
        (FORM, b"openai[messages][0][role]=user&openai[messages][0][role][x]=1", None,
         "openai.messages.0.role"),
        (FORM, b"openai[messages][12][role]=user&openai[messages][12][role][x]=1", None,
         "openai.messages.12.role"),
        (JSON, messages_json({"role": "robot", "content": "y"}), None, "openai.messages.0.role"),
        # anywhere else it is a name, cut off like any unknown name
        (FORM, f"{CARD}=1&{CARD}[a]=2".encode(), None, "body"),
        ("", b"", f"{CARD}=1&{CARD}[a]=2", "query"),
        ("", b"", {CARD: "1", f"{CARD}[a]": "2"}, "query"),
        (FORM, f"openai[messages][{CARD}][role]=u&openai[messages][{CARD}][role][x]=1".encode(),
         None, "openai.messages"),
        (FORM, f"openai[temperature][0]=1&openai[temperature][0][{CARD}]=2".encode(), None,
         "openai.temperature"),
        (FORM, f"usage_limit[{CARD}]=1&usage_limit[{CARD}][x]=2".encode(), None, "usage_limit"),
        (JSON, messages_json({"role": "user", "content": "x", CARD: "y"}), None,
         "openai.messages.0"),
    ],
)  # fmt: skip
def test_a_number_in_a_field_name_is_repeated_only_as_a_list_position(
    content_type: str, body: bytes, query: Any, field: str
) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_request(content_type, body, query)

    assert [e.field for e in caught.value.errors] == [field]


KEYS = b"site=acme&email=a%40example.com&api_key=tk&openai[api_key]=sk&"


@pytest.mark.parametrize(
    ("content_type", "body", "query", "fields"),
    [
        # the second message, sent as [5], is compacted to position 1: its error names [5]
        (FORM, KEYS + b"openai[messages][0][role]=user&openai[messages][5][content]=x", None,
         ["openai.messages.0.content", "openai.messages.5.role"]),
        (FORM, KEYS + b"openai[messages][0][role]=user&openai[messages][0][content]=y"
         b"&openai[messages][7][role]=robot&openai[messages][7][content]=x"
         b"&openai[messages][7][name]=a%20b", None,
         ["openai.messages.7.role", "openai.messages.7.name"]),
        (FORM, KEYS + b"openai[messages][03][role]=robot&openai[messages][03][content]=x", None,
         ["openai.messages.03.role"]),  # as written
        # in the query string too (nested like a form)
        (JSON, json.dumps({**SEED, "openai": {"api_key": "sk"}}).encode(),
         "openai[messages][2][role]=user&openai[messages][9][content]=x",
         ["openai.messages.2.content", "openai.messages.9.role"]),
        # appended ([]) messages are numbered as sent: from 0, in order
        (FORM, KEYS + b"openai[messages][][role]=user&openai[messages][][content]=x"
         b"&openai[messages][][role]=robot&openai[messages][][content]=y", None,
         ["openai.messages.1.role"]),
    ],
)  # fmt: skip
def test_a_form_messages_error_names_the_index_the_sender_wrote(
    content_type: str, body: bytes, query: Any, fields: list[str]
) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_request(content_type, body, query)

    assert [e.field for e in caught.value.errors] == fields
    assert not any("position" in e.message for e in caught.value.errors)


def test_a_form_index_too_long_to_repeat_is_told_as_a_position() -> None:
    body = (
        KEYS + b"openai[messages][0][role]=user&openai[messages][0][content]=y"
        b"&openai[messages][" + CARD.encode() + b"][role]=robot"
        b"&openai[messages][" + CARD.encode() + b"][content]=x"
    )
    with pytest.raises(ParamsError) as caught:
        parse_request(FORM, body)

    [error] = caught.value.errors
    assert error.field == "openai.messages.1.role"
    assert error.message.endswith(
        " (position 1, counting from 0 in the order of the form's indices:"
        " the index sent is too long to repeat)"
    )
    assert CARD not in str(caught.value.body())


# --- integers as Liquid renders them --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3), (3, 3), (" 3 ", 3), ("0", 0), ("007", 7), ("9223372036854775807", 2**63 - 1)],
)
def test_digit_strings_are_integers(value: Any, expected: int) -> None:
    params = from_mapping(seed(usage_limit__amount=value, usage_limit__current_usage_amount=value))
    assert params.usage_limit is not None
    assert params.usage_limit.amount == expected
    assert params.usage_limit.current_usage_amount == expected


REJECTED_INTEGERS = [
    "3.5", 3.5, 3.0, "-1", -1, "", "  ", "three", "1e3", "0x10", "+3", "\uff13", "\u0663", True,
    [], {}, "9" * 30, 2**64, "1_000",
]  # fmt: skip


@pytest.mark.parametrize("value", REJECTED_INTEGERS)
@pytest.mark.parametrize(
    "field",
    ["usage_limit.amount", "usage_limit.current_time", "openai.max_tokens", "openai.n"],
)
def test_non_integers_are_refused_naming_the_field(value: Any, field: str) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**{field.replace(".", "__"): value}))

    assert status_of(caught.value) == 422
    assert [e.field for e in caught.value.errors] == [field]


def test_null_is_absent_a_required_integer_is_required() -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(usage_limit__amount=None))
    assert caught.value.body() == {
        "errors": [{"field": "usage_limit.amount", "message": "is required"}]
    }


def test_null_is_absent_an_optional_integer_is_its_default() -> None:
    """As a null ``usage_limit``, ``event_number`` or ``name``: ``"max_tokens": null`` was a 422."""
    params = from_mapping(seed(openai__max_tokens=None, openai__max_completion_tokens=None))
    assert params == from_mapping(seed(openai__max_tokens=...))
    assert params.openai.completion_cap() == DEFAULT_MAX_TOKENS


def test_null_leaves_an_optional_chat_param_out() -> None:
    params = from_mapping(seed(openai__n=None, openai__temperature=None))
    assert "n" not in params.openai.passthrough()
    assert "temperature" not in params.openai.passthrough()


@pytest.mark.parametrize("field", ["openai.max_tokens", "openai.n", "openai.max_completion_tokens"])
@pytest.mark.parametrize("value", ["0", 0, "-5", -5, "", "1.5", True])
def test_counts_must_be_positive_and_every_refusal_says_so(field: str, value: Any) -> None:
    """A count's every refusal says "positive": "non-negative" told a sender of "-5" to send
    the 0 that is refused too."""
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**{field.replace(".", "__"): value}))
    assert [e.field for e in caught.value.errors] == [field]
    assert "a positive integer" in caught.value.errors[0].message


@pytest.mark.parametrize(
    ("field", "value"),
    [("openai", []), ("openai", "x"), ("usage_limit", 5), ("openai.messages.0", "hi")],
)
def test_a_value_that_must_be_an_object_is_told_so_in_the_senders_terms(
    field: str, value: Any
) -> None:
    """Not pydantic's "Input should be a valid dictionary or instance of OpenAIParams"."""
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**{field.replace(".", "__"): value}))
    assert caught.value.body() == {"errors": [{"field": field, "message": "must be an object"}]}


UNRENDERED = "holds Liquid markup ({{ ... }} or {% ... %}) that was not rendered"


@pytest.mark.parametrize(
    ("field", "template"),
    [
        ("site", "{{site.slug}}"),
        ("email", "{{ person.email | default: 'ada@example.com' }}"),
        ("email", "{{person.email}}"),
        ("api_key", "{{site.api_key}}"),
        ("openai.api_key", "sk-{{site.openai_key}}"),
        ("openai.model", "{{campaign.model}}"),
        ("event_number", "{{ origin.event_number }}-complete"),
    ],
)
def test_liquid_left_unrendered_is_refused_naming_the_field(field: str, template: str) -> None:
    """Talkable fills every value in; markup left in one is a template it did not render. Sent
    on, it would cost an OpenAI call before Talkable refused the write-back (a key, an email)
    or kept one event for every person (a constant event number: DuplicateEventNumber)."""
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**{field.replace(".", "__"): template}))

    assert status_of(caught.value) == 422
    assert caught.value.body() == {"errors": [{"field": field, "message": UNRENDERED}]}


def test_a_prompt_may_hold_liquid_markup() -> None:
    """A prompt is the campaign's text, braces and all (asking for a Liquid snippet, say)."""
    params = from_mapping(seed(openai__messages__0__content="Write {{ name }} in Liquid"))
    assert params.openai.messages[0].content == "Write {{ name }} in Liquid"


@pytest.mark.parametrize(
    "email", ["ada lovelace@example.com", "ada@exa mple.com", "ada@@example.com", "a@b@c.com"]
)
def test_an_email_with_a_space_or_a_second_at_is_refused(email: str) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(email=email))
    assert caught.value.body() == {
        "errors": [{"field": "email", "message": "must be an email address"}]
    }


@pytest.mark.parametrize(
    "site",
    [
        "acme store", "acme\tstore", "acme:shop", ":acme", "acme:", "acmé", "acme\u202e",
        "acme\u200b", "acme\u00a0store", "\uff41cme",
    ],
)  # fmt: skip
def test_a_site_that_is_no_slug_is_refused(site: str) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(site=site))
    assert status_of(caught.value) == 422
    assert caught.value.body() == {"errors": [{"field": "site", "message": SITE_SLUG_RULE}]}


def test_two_sites_people_never_share_a_person_key() -> None:
    """The person's key (usage window, partition, ledger entry) is ``site:email``: a site with a
    ``:`` made one person of two tenants' (site "acme:shop", email "c@x.io" and site "acme",
    email "shop:c@x.io": the second limited by the first's usage), so it is refused."""
    pairs = [("acme:shop", "c@x.io"), ("acme", "shop:c@x.io")]
    people = []
    for site, email in pairs:
        try:
            people.append(from_mapping(seed(site=site, email=email)).person)
        except ParamsError:
            continue
    assert len(set(people)) == len(people) == 1


def test_a_site_in_any_case_is_one_person() -> None:
    """Talkable's site slugs are one site in any case (the signature check and the tools read
    them so): the same email under ``Shop``, ``shop`` and ``SHOP`` was three people, three
    usage windows, and a limit of 1 admitted three webhooks. The person is one; the site stays
    as typed (what Talkable is called with)."""
    parsed = [from_mapping(seed(site=site, email="Ada@X.io")) for site in ("Shop", "shop", "SHOP")]

    assert {p.person for p in parsed} == {"shop:ada@x.io"}
    assert [p.site for p in parsed] == ["Shop", "shop", "SHOP"]
    assert from_mapping(seed(site="Shop2", email="ada@x.io")).person != parsed[0].person


@settings(max_examples=200)
@given(
    site=st.from_regex(r"[\x21-\x39\x3b-\x7e]{1,20}", fullmatch=True),
    other=st.from_regex(r"[\x21-\x39\x3b-\x7e]{1,20}", fullmatch=True),
)
def test_the_person_key_is_the_site_s_case_and_nothing_else(site: str, other: str) -> None:
    """Two site slugs are one person's site exactly when they differ only in case."""
    same = person_key(site, "c@x.io") == person_key(other, "c@x.io")
    assert same == (site.lower() == other.lower())
    assert person_key(site.swapcase(), "c@x.io") == person_key(site, "c@x.io")


def test_a_person_is_looked_up_by_the_key_and_as_records_before_schema_11_keyed_them() -> None:
    """Records carry their key; those written before the key folded the site's case carry it
    as the site was typed, and a look-up of the person finds both."""
    assert person_keys(["Shop"], "ada@x.io") == ["shop:ada@x.io", "Shop:ada@x.io"]
    assert person_keys(["shop"], "ada@x.io") == ["shop:ada@x.io"]
    # a site's spellings: one key now, each as typed before, the key first
    assert person_keys(["Shop", "shop", "SHOP"], "ada@x.io") == [
        "shop:ada@x.io",
        "Shop:ada@x.io",
        "SHOP:ada@x.io",
    ]


# --- usage_limit: all or nothing ------------------------------------------------------------


@pytest.mark.parametrize("absent", [..., None, {}, "", "  "])
def test_a_usage_limit_without_content_means_no_limit(absent: Any) -> None:
    assert from_mapping(seed(usage_limit=absent)).usage_limit is None


@pytest.mark.parametrize("missing", list(SEED["usage_limit"]))
def test_a_usage_limit_needs_every_field(missing: str) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**{f"usage_limit__{missing}": ...}))

    assert status_of(caught.value) == 422
    assert caught.value.body() == {
        "errors": [{"field": f"usage_limit.{missing}", "message": "is required"}]
    }


def test_a_usage_limit_rendered_all_blank_is_refused_not_ignored() -> None:
    blank = dict.fromkeys(SEED["usage_limit"], "")

    with pytest.raises(ParamsError) as caught:
        parse_request(FORM, form_body(seed(usage_limit=blank)))

    assert status_of(caught.value) == 422
    assert sorted(e.field for e in caught.value.errors) == sorted(
        f"usage_limit.{name}" for name in SEED["usage_limit"]
    )


@pytest.mark.parametrize("value", ["3", ["3"], 3])
def test_a_usage_limit_that_is_not_an_object_is_refused(value: Any) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(usage_limit=value))
    assert [e.field for e in caught.value.errors] == ["usage_limit"]


# --- openai: messages and passthrough -------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "fields"),
    [
        ([], ["openai.messages"]),
        ("hi", ["openai.messages"]),
        ([{"role": "robot", "content": "x"}], ["openai.messages.0.role"]),
        ([{"role": "tool", "content": "x"}], ["openai.messages.0.role"]),  # no tool_call_id
        ([{"role": "user"}], ["openai.messages.0.content"]),
        ([{"content": "x"}], ["openai.messages.0.role"]),
        ([{"role": "user", "content": "x"}, "x"], ["openai.messages.1"]),
        ([{"role": "user", "content": 5}], ["openai.messages.0.content"]),
        ([{"role": "user", "content": "x", "bogus": "y"}], ["openai.messages.0"]),
        # OpenAI's rule for a participant's name: 1 to 64 of a-z, A-Z, 0-9, _ and -
        ([{"role": "user", "content": "x", "name": "Alice Smith"}], ["openai.messages.0.name"]),
        ([{"role": "user", "content": "x", "name": "José"}], ["openai.messages.0.name"]),
        ([{"role": "user", "content": "x", "name": "a" * 65}], ["openai.messages.0.name"]),
        ([{"role": "user", "content": "x", "name": 42}], ["openai.messages.0.name"]),
        ([{"role": "user", "content": "x", "name": ["a"]}], ["openai.messages.0.name"]),
    ],
)
def test_messages_must_be_role_content_pairs(messages: Any, fields: list[str]) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(openai__messages=messages))
    assert status_of(caught.value) == 422
    assert [e.field for e in caught.value.errors] == fields


NAMED = seed(openai__messages__1__name=" Alice_42 ")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_message_may_name_its_participant_in_every_shape(shape: str) -> None:
    """OpenAI's optional ``name`` of a message's participant is a param like the others
    (it was refused as "a field that is not allowed"), trimmed, and travels in the message."""
    content_type, body, query = shapes(NAMED)[shape]

    params = parse_request(content_type, body, query)

    assert params == parse_request(JSON, json.dumps(NAMED).encode())
    assert [m.model_dump() for m in params.openai.messages] == [
        {"role": "system", "content": "You write short, funny verses."},
        {"role": "user", "content": SEED["openai"]["messages"][1]["content"], "name": "Alice_42"},
    ]


@pytest.mark.parametrize("absent", [None, "", "  "])
def test_a_blank_or_null_name_is_absent(absent: Any) -> None:
    """Liquid renders a missing first name blank: the message goes without a name (OpenAI
    refuses an empty one), and is the request it was without one (the same id)."""
    params = from_mapping(seed(openai__messages__1__name=absent))
    assert params.openai.messages[1].name is None
    assert "name" not in params.openai.messages[1].model_dump()
    assert request_fingerprint(params) == request_fingerprint(from_mapping(SEED))


def test_a_request_without_names_keeps_the_id_it_had_before_names() -> None:
    """A webhook's id is its dedupe key: one retried by Talkable across an upgrade must keep it
    (this is the seed's id as talkstream gave it before messages could carry a name)."""
    assert request_fingerprint(from_mapping(SEED)) == "80fb900e79058cf08ac6d06cfd19734f"


def test_roles_are_read_case_insensitively() -> None:
    params = from_mapping(seed(openai__messages=[{"role": " User ", "content": "x"}]))
    assert params.openai.messages[0].role == "user"


def test_unknown_openai_params_pass_through_unchanged() -> None:
    extra = {
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "user": "alice",
        "stop": "END",
        "some_future_param": [1, "two", None],
    }
    params = from_mapping(seed(openai={**SEED["openai"], **extra}))

    passed = params.openai.passthrough()

    assert {k: passed[k] for k in extra} == extra
    assert "api_key" not in passed
    assert OPENAI_KEY not in json.dumps(passed)


@pytest.mark.parametrize(
    ("name", "form_value", "value"),
    [
        ("temperature", "0.7", 0.7),
        ("temperature", "1", 1.0),
        ("top_p", ".5", 0.5),
        ("presence_penalty", "-1.5", -1.5),
        ("frequency_penalty", "2", 2.0),
        ("n", "2", 2),
        ("seed", "-42", -42),
        ("max_completion_tokens", "300", 300),
        ("top_logprobs", "0", 0),
        ("logprobs", "true", True),
        ("logprobs", " FALSE ", False),
        ("parallel_tool_calls", "false", False),
        ("store", "true", True),
        ("stream", "false", False),
        ("unknown_param", "0.7", "0.7"),
    ],
)
def test_form_strings_become_the_chat_completions_types(
    name: str, form_value: str, value: Any
) -> None:
    tree = seed(**{f"openai__{name}": form_value})

    from_form = parse_request(FORM, form_body(tree)).openai.passthrough()[name]
    from_json = parse_request(JSON, json.dumps(seed(**{f"openai__{name}": value})).encode())

    assert from_form == value
    assert type(from_form) is type(value)
    assert from_json.openai.passthrough()[name] == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", "hot"),
        ("temperature", "nan"),
        ("temperature", "1e999"),
        ("temperature", True),
        ("temperature", [0.7]),
        ("n", "1.5"),
        ("seed", "1.0"),
        ("logprobs", "yes"),
        ("logprobs", 1),
        ("stream", "true"),
        ("stream", True),
    ],
)
def test_mistyped_well_known_params_are_refused(name: str, value: Any) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**{f"openai__{name}": value}))
    assert [e.field for e in caught.value.errors] == [f"openai.{name}"]


# --- the other fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"site": ...}, "site"),
        ({"site": "  "}, "site"),
        ({"site": "acme\nstore"}, "site"),
        ({"email": "not-an-email"}, "email"),
        ({"email": ""}, "email"),
        ({"email": 42}, "email"),
        ({"api_key": ...}, "api_key"),
        ({"api_key": "   "}, "api_key"),
        ({"openai__api_key": ""}, "openai.api_key"),
        ({"openai__api_key": ...}, "openai.api_key"),
        ({"openai": ...}, "openai"),
        ({"openai": "gpt"}, "openai"),
        ({"openai__model": ""}, "openai.model"),
        ({"event_number": "x" * 201}, "event_number"),
        ({"usage_limit__current_time": "now"}, "usage_limit.current_time"),
        ({"trigger_criteria": [5]}, "trigger_criteria"),
    ],
)
def test_each_invalid_field_is_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**changes))

    assert status_of(caught.value) == 422
    assert [e.field for e in caught.value.errors] == [field]


def test_every_offending_field_is_named_at_once() -> None:
    bad = seed(
        email="nope", openai__messages__1__role="robot", usage_limit__amount="-1", api_key=...
    )

    with pytest.raises(ParamsError) as caught:
        parse_request(JSON, json.dumps(bad).encode())

    assert {e.field for e in caught.value.errors} == {
        "email",
        "api_key",
        "openai.messages.1.role",
        "usage_limit.amount",
    }


def test_whitespace_around_values_is_not_meaning() -> None:
    spaced = seed(
        site=" acme-store ",
        email=" ALICE@example.com\n",
        api_key=f" {TALKABLE_KEY}\n",
        openai__api_key=f"{OPENAI_KEY} ",
        openai__model=" gpt-4o-mini",
        event_number=" order-42-complete ",
    )
    assert from_mapping(spaced) == from_mapping(SEED)


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_event_number_is_absent(blank: str) -> None:
    assert from_mapping(seed(event_number=blank)).event_number is None


def test_a_blank_trigger_criteria_is_kept_and_does_not_trigger() -> None:
    params = from_mapping(seed(trigger_criteria=""))
    assert params.trigger_criteria == ""
    assert not trigger_met(params.trigger_criteria)


@pytest.mark.parametrize(
    ("criteria", "met"),
    [
        (None, True),
        ("true", True),
        (" TRUE\n", True),
        ("True", True),
        ("", False),
        ("  ", False),
        ("false", False),
        ("yes", False),
        ("1", False),
        ("truely", False),
    ],
)
def test_trigger_rule(criteria: str | None, met: bool) -> None:
    assert trigger_met(criteria) is met


def test_json_booleans_for_trigger_criteria_read_as_text() -> None:
    assert trigger_met(from_mapping(seed(trigger_criteria=True)).trigger_criteria)
    assert not trigger_met(from_mapping(seed(trigger_criteria=False)).trigger_criteria)


@pytest.mark.parametrize(("number", "text"), [(1, "1"), (0, "0"), (1.5, "1.5"), (-1, "-1")])
def test_json_numbers_for_trigger_criteria_read_as_liquid_renders_them(
    number: float, text: str
) -> None:
    # the reference generates on `true` only: Liquid's "1" does not, nor does a JSON 1, which
    # is the same request as the form's trigger_criteria=1 (same id)
    as_json = parse_request(JSON, json.dumps(seed(trigger_criteria=number)).encode())
    as_form = parse_request(FORM, form_body(seed(trigger_criteria=text)))

    assert as_json.trigger_criteria == text
    assert not trigger_met(as_json.trigger_criteria)
    assert request_fingerprint(as_json) == request_fingerprint(as_form)


@pytest.mark.parametrize("value", [[1], {"if": "true"}, ["true"]])
def test_a_trigger_criteria_that_is_no_scalar_is_told_what_is_accepted(value: Any) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_request(JSON, json.dumps(seed(trigger_criteria=value)).encode())

    assert caught.value.body() == {
        "errors": [
            {
                "field": "trigger_criteria",
                "message": "must be a string, number or boolean: generation happens only when"
                " it is absent, null or true (trimmed, any case); any other value (false, 1, 0,"
                " blank) skips the request",
            }
        ]
    }


def test_completion_event_number_defaults_per_request() -> None:
    given = from_mapping(SEED)
    omitted = from_mapping(seed(event_number=...))

    assert completion_event_number(given.event_number, "abc") == "order-42-complete"
    assert completion_event_number(omitted.event_number, "abc") == "generate_text_complete-abc"
    assert completion_event_number(omitted.event_number, "abc") != completion_event_number(
        omitted.event_number, "xyz"
    )


# --- legacy webhooks and the query string ---------------------------------------------------


def test_legacy_merge_order_is_payload_then_extras_then_top_level() -> None:
    body = {
        "key": WEBHOOK_KEY,
        "site": "envelope-site",
        "type": "event_web_hook",
        "payload": json.dumps({**SEED, "event_number": "from-payload", "trigger_criteria": "p"}),
        "extras": json.dumps({"event_number": "from-extras", "openai": {"model": "gpt-4o"}}),
        "trigger_criteria": "TRUE",
    }

    params = parse_request(FORM, urlencode(body).encode())

    assert params.event_number == "from-extras"
    assert params.trigger_criteria == "TRUE"
    assert params.openai.model == "gpt-4o"  # deep merge: extras' openai keeps payload's messages
    assert params.openai.messages == from_mapping(SEED).openai.messages
    assert params.site == "acme-store"  # the params' own site wins over the envelope's


@pytest.mark.parametrize("site", [..., None, "", " "])
def test_legacy_site_comes_from_the_envelope_when_params_lack_it(site: Any) -> None:
    extras = seed(site=site)
    body = {"key": WEBHOOK_KEY, "site": "envelope-site", "type": "t", "extras": extras}

    assert parse_request(JSON, json.dumps(body).encode()).site == "envelope-site"


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", "42", '"text"', "NaN"])
@pytest.mark.parametrize("part", ["extras", "payload"])
def test_legacy_parts_must_be_json_objects(part: str, value: str) -> None:
    body = {"key": WEBHOOK_KEY, "site": "acme", "type": "t", part: value}

    for content_type, raw in ((FORM, urlencode(body).encode()), (JSON, json.dumps(body).encode())):
        with pytest.raises(ParamsError) as caught:
            parse_request(content_type, raw)
        assert status_of(caught.value) == 422
        assert [e.field for e in caught.value.errors] == [part]


def test_the_body_wins_over_the_query_string() -> None:
    query = {"event_number": ["from-query"], "openai[model]": ["gpt-from-query"], "x": ["1"]}

    params = parse_request(JSON, json.dumps(SEED).encode(), query)

    assert params == from_mapping(SEED)


def test_a_multidict_query_keeps_rails_arrays_in_order() -> None:
    """aiohttp hands the query as a MultiDict: every pair, in order, so ``[]`` arrays work."""
    query = MultiDict(form_pairs(SEED))

    assert parse_request("", b"", query) == from_mapping(SEED)


def test_the_query_string_fills_what_the_body_lacks() -> None:
    body = seed(event_number=..., openai__model=...)
    query = {"event_number": "from-query", "openai[model]": "gpt-4o"}

    params = parse_request(FORM, form_body(body), query)

    assert (params.event_number, params.openai.model) == ("from-query", "gpt-4o")


# --- status codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "status", "field"),
    [
        (JSON, b"{not json", 400, "body"),
        (JSON, b"[1, 2]", 400, "body"),
        (JSON, b'"text"', 400, "body"),
        (JSON, b"  \n ", 422, "site"),
        # not JSON, at its path
        (JSON, b'{"site": NaN}', 400, "site"),
        (JSON, b'{"a": Infinity}', 400, "body"),
        # valid JSON, a number beyond a double's range: the value's fault, at its path
        (JSON, b'{"a": 1e999}', 422, "body"),
        (JSON, b'{"usage_limit": -1e999}', 422, "usage_limit"),
        (JSON, b'{"a": 1e999, "b": }', 400, "body"),  # broken JSON past it
        # valid JSON, an integer longer than Python reads: the value's fault, at its path (cut
        # to the contract's names: "a" is none)
        (JSON, b'{"a": ' + b"1" * 5000 + b"}", 422, "body"),
        (JSON, b"[" * 100_000 + b"]" * 100_000, 400, "body"),
        (JSON, b'{"a":' * 70 + b"1" + b"}" * 70, 400, "body"),
        (JSON, b'{"site": "\\ud800"}', 400, "body"),
        (JSON, b'{"site": "\xff\xfe"}', 400, "body"),
        (JSON, '{"site": "\ud800"}'.encode("utf-16-le", "surrogatepass"), 400, "body"),
        (FORM, b"site=%ff", 400, "body"),
        (FORM, b"site=\xff", 400, "body"),
        (FORM, b"a=1&" * 1001, 400, "body"),
        (FORM, b"a" + b"[b]" * 40 + b"=1", 400, "body"),
        ("multipart/form-data; boundary=zz", b"no parts here", 400, "body"),
        ("multipart/form-data", b"--zz\r\n\r\n--zz--", 400, "body"),
        ("text/plain", b"site=acme", 415, "content-type"),
        ("application/xml", b"<a/>", 415, "content-type"),
        (FORM + "; charset=latin-1", b"site=acme", 415, "content-type"),
        (FORM, json.dumps(seed()).encode(), 415, "content-type"),  # curl -d '{...}'
        (FORM, b" " + json.dumps(seed()).encode(), 415, "content-type"),
        (FORM, b"{not json=1", 422, "site"),  # a form (of a strange name), not JSON
        (JSON, json.dumps(seed(email="x")).encode(), 422, "email"),
    ],
)
def test_status_codes(content_type: str, body: bytes, status: int, field: str) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_request(content_type, body)

    assert status_of(caught.value) == status
    assert caught.value.errors[0].field == field
    assert caught.value.__context__ is None


OUT_OF_RANGE = "holds a number out of range: beyond 1.8e+308 either way"
NOT_JSON_CONSTANT = "holds NaN or Infinity, which are not JSON"


@pytest.mark.parametrize(
    ("value", "field", "status", "message"),
    [
        ("1e999", "usage_limit", 422, OUT_OF_RANGE),
        ("-1e999", "usage_limit", 422, OUT_OF_RANGE),
        ('{"amount": 1e999}', "usage_limit.amount", 422, OUT_OF_RANGE),
        ('{"amount": "3", "start_time": 2E+400}', "usage_limit.start_time", 422, OUT_OF_RANGE),
        ("NaN", "usage_limit", 400, NOT_JSON_CONSTANT),
        ('{"amount": Infinity}', "usage_limit.amount", 400, NOT_JSON_CONSTANT),
        ('{"amount": -Infinity}', "usage_limit.amount", 400, NOT_JSON_CONSTANT),
    ],
)
def test_a_number_json_cannot_hold_names_its_field(
    value: str, field: str, status: int, message: str
) -> None:
    """A number beyond a double's range (valid JSON, read as infinity) and NaN or Infinity
    (not JSON) were one 400 "body: not valid JSON", naming no field."""
    body = json.dumps(seed(usage_limit="MARK")).replace('"MARK"', value).encode()

    with pytest.raises(ParamsError) as caught:
        parse_request(JSON, body)

    assert status_of(caught.value) == status
    assert [e.model_dump() for e in caught.value.errors] == [{"field": field, "message": message}]
    assert caught.value.__context__ is None


@pytest.mark.parametrize("part", ["extras", "payload"])
def test_a_number_out_of_range_in_a_legacy_part_names_its_param(part: str) -> None:
    inner = json.dumps(seed(openai__temperature="MARK")).replace('"MARK"', "1e999")
    body = {"key": WEBHOOK_KEY, "site": "acme", "type": "t", part: inner}

    with pytest.raises(ParamsError) as caught:
        parse_request(FORM, urlencode(body).encode())

    assert status_of(caught.value) == 422
    assert [e.model_dump() for e in caught.value.errors] == [
        {"field": "openai.temperature", "message": OUT_OF_RANGE}
    ]


def test_a_json_body_sent_as_a_form_is_told_its_content_type() -> None:
    """``curl -d '{...}'`` (curl's default Content-Type is a form's): not "site is required",
    "email is required", ... for params that were all sent."""
    with pytest.raises(ParamsError) as caught:
        parse_request(FORM, json.dumps(seed()).encode())

    assert caught.value.body() == {
        "errors": [
            {
                "field": "content-type",
                "message": "the body is a JSON object, sent as a form: send it as application/json",
            }
        ]
    }


ENCODINGS = ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_json_in_utf16_or_utf32_reads_as_in_utf8(encoding: str) -> None:
    """Told apart by the first bytes, as README's 400 row says; beyond the BMP too."""
    tree = seed(openai__messages__0__content="Vers für Ada 🎉")

    params = parse_request(JSON, json.dumps(tree, ensure_ascii=False).encode(encoding))

    assert params == parse_request(JSON, json.dumps(tree).encode())


@pytest.mark.parametrize(
    "body",
    [
        '{"site": "café"}'.encode("latin-1"),
        '{"site": "caf€"}'.encode("cp1252"),
        '{"site": "x"}'.encode("utf-16-le")[:-1],
    ],
)
def test_json_in_any_other_encoding_is_400(body: bytes) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_request(JSON, body)

    assert status_of(caught.value) == 400
    assert caught.value.body() == {
        "errors": [{"field": "body", "message": "not valid UTF-8, UTF-16 or UTF-32"}]
    }


def test_a_body_over_the_limit_is_413_before_anything_else() -> None:
    body = json.dumps(SEED).encode()

    assert parse_request(JSON, body, max_body_bytes=len(body)) == from_mapping(SEED)
    with pytest.raises(ParamsError) as caught:
        parse_request("text/plain", body, max_body_bytes=len(body) - 1)
    assert (status_of(caught.value), caught.value.errors[0].field) == (413, "body")


@pytest.mark.parametrize(
    "query",
    [{"a": 1}, {"a": [1]}, {"a": "1", "a[b]": "2"}, {"a": "\ud800"}],
)
def test_a_broken_query_is_400(query: Any) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_request(JSON, json.dumps(SEED).encode(), query)
    assert status_of(caught.value) == 400


@pytest.mark.parametrize(
    "query", ["site=acme-store%ff%fe", "openai[messages][0][content]=%c3%28bad", "%ff=1"]
)
def test_a_query_string_that_is_not_utf8_is_400_not_mangled(query: str) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_request(JSON, json.dumps(seed(site=...)).encode(), query)

    assert status_of(caught.value) == 400
    assert caught.value.body() == {"errors": [{"field": "query", "message": "not valid UTF-8"}]}
    assert caught.value.__context__ is None


def read_query(query: Any) -> Any:
    try:
        return decode_query(query)
    except FormError as exc:
        return (exc.field, exc.message)


@FAST
@given(st.text(alphabet="[]=&%;+ab01é\x00CcFf289 ", max_size=60))
def test_a_raw_query_string_reads_as_aiohttp_reads_it(raw: str) -> None:
    """The ingress hands over the query as sent: read so, it is what aiohttp's
    ``request.query`` gives, except that an escape that is not UTF-8 is refused, not U+FFFD."""
    aiohttp_reads = URL.build(path="/", query_string=raw, encoded=True).query

    ours = read_query(raw)

    if ours == ("query", "not valid UTF-8"):
        assert any("\ufffd" in name + value for name, value in aiohttp_reads.items())
    else:
        assert ours == read_query(aiohttp_reads)


# --- the request fingerprint ----------------------------------------------------------------

MUTATIONS: list[dict[str, Any]] = [
    {"site": "other-store"},
    {"email": "bob@example.com"},
    {"api_key": TALKABLE_KEY + "x"},
    {"event_number": "order-43-complete"},
    {"event_number": ...},
    {"openai__api_key": OPENAI_KEY + "x"},
    {"openai__model": "gpt-4o"},
    {"openai__max_tokens": "151"},
    {"openai__temperature": "0.8"},
    {"openai__stop": ["END"]},
    {"openai__user": "bob"},
    {"openai__seed": "1"},
    {"openai__messages__0__content": "You write long verses."},
    {"openai__messages__0__role": "developer"},
    {"openai__messages__1__name": "alice"},
    {"openai__messages": SEED["openai"]["messages"][::-1]},
    {"usage_limit": ...},
    {"usage_limit__amount": "4"},
    {"usage_limit__duration_in_seconds": "60"},
    {"usage_limit__start_time": "1700000001"},
    {"usage_limit__current_time": "1700000101"},
    {"usage_limit__current_usage_amount": "1"},
    {"trigger_criteria": ""},
    {"trigger_criteria": ...},
]


def test_the_fingerprint_is_32_hex_and_hides_the_keys() -> None:
    fingerprint = request_fingerprint(from_mapping(SEED))
    assert re.fullmatch(r"[0-9a-f]{32}", fingerprint)
    assert TALKABLE_KEY not in fingerprint and OPENAI_KEY not in fingerprint


def test_any_change_changes_the_fingerprint() -> None:
    fingerprints = {request_fingerprint(from_mapping(seed(**m))) for m in MUTATIONS}
    fingerprints.add(request_fingerprint(from_mapping(SEED)))
    assert len(fingerprints) == len(MUTATIONS) + 1


def test_the_fingerprint_ignores_what_is_not_a_param() -> None:
    noisy = {**SEED, "unknown_top_level": "x", "key": WEBHOOK_KEY, "type": "event_web_hook"}
    assert request_fingerprint(from_mapping(noisy)) == request_fingerprint(from_mapping(SEED))


# --- properties -----------------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=25,
)
CONTENT_TYPES = [
    JSON,
    "",
    FORM,
    "multipart/form-data; boundary=b",
    "text/plain",
    "application/vnd.api+json",
    "garbage;;;=",
]


def assert_only_params_or_4xx(content_type: str, body: bytes, query: Any = None) -> None:
    try:
        result = parse_request(content_type, body, query, max_body_bytes=20_000)
    except ParamsError as exc:
        assert 400 <= status_of(exc) < 500
        assert exc.errors
        assert exc.__context__ is None
        json.dumps(exc.body())
    else:
        assert isinstance(result, GenerateParams)
        assert re.fullmatch(r"[0-9a-f]{32}", request_fingerprint(result))


@FAST
@given(st.sampled_from(CONTENT_TYPES), st.binary(max_size=400))
def test_arbitrary_bytes_give_params_or_a_4xx(content_type: str, body: bytes) -> None:
    assert_only_params_or_4xx(content_type, body)


@FAST
@given(json_values)
def test_arbitrary_json_gives_params_or_a_4xx(value: Any) -> None:
    assert_only_params_or_4xx(JSON, json.dumps(value).encode())


SEED_PATHS = [
    "site", "email", "api_key", "event_number", "openai", "openai.messages",
    "openai.messages.0", "openai.messages.0.role", "openai.messages.1.content", "openai.api_key",
    "openai.max_tokens", "openai.temperature", "openai.n", "openai.logprobs", "openai.stop",
    "usage_limit", "usage_limit.amount", "usage_limit.start_time", "trigger_criteria", "extras",
    "payload",
]  # fmt: skip


def replace_at(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(tree)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return data


@FAST
@given(st.sampled_from(SEED_PATHS), json_values, st.sampled_from(["json", "form", "legacy"]))
def test_seed_with_any_field_replaced_gives_params_or_a_4xx(
    path: str, value: Any, shape: str
) -> None:
    tree = replace_at(SEED, path, value)
    if shape == "json":
        assert_only_params_or_4xx(JSON, json.dumps(tree).encode())
    elif shape == "form" and isinstance(tree, dict):
        assert_only_params_or_4xx(FORM, form_body(tree))
    else:
        body = {"key": WEBHOOK_KEY, "site": "s", "type": "t", "extras": json.dumps(tree)}
        assert_only_params_or_4xx(FORM, urlencode(body).encode())


form_names = st.lists(
    st.sampled_from(["openai", "messages", "role", "usage_limit", "amount", "a", "0", "1", ""]),
    min_size=1,
    max_size=5,
).map(lambda parts: parts[0] + "".join(f"[{p}]" for p in parts[1:]))


@FAST
@given(
    st.lists(st.tuples(form_names, text), max_size=12),
    st.text(alphabet="[]=&%;+ab01\x00\xff", max_size=60),
)
def test_arbitrary_forms_give_params_or_a_4xx(pairs: list[tuple[str, str]], junk: str) -> None:
    assert_only_params_or_4xx(FORM, urlencode(pairs).encode())
    assert_only_params_or_4xx(FORM, junk.encode("utf-8", "surrogatepass"))
    assert_only_params_or_4xx(FORM, form_body(SEED) + b"&" + urlencode(pairs).encode())
    assert_only_params_or_4xx(JSON, json.dumps(SEED).encode(), dict(pairs))


@FAST
@given(st.dictionaries(form_names | text, text | st.lists(text, max_size=3), max_size=6))
def test_arbitrary_query_strings_give_params_or_a_4xx(query: dict[str, Any]) -> None:
    assert_only_params_or_4xx("", b"", query)
    assert_only_params_or_4xx(JSON, json.dumps(SEED).encode(), query)


# Secrets are placed everywhere a mistake could echo them: values, wrong fields, key names.
secrets = st.from_regex(r"(sk|tk)-[A-Za-z0-9]{20}", fullmatch=True)
card_numbers = st.from_regex(r"[1-9][0-9]{12,18}", fullmatch=True)  # a name of digits too


@FAST
@given(
    secret=secrets | card_numbers,
    path=st.sampled_from(SEED_PATHS),
    as_key=st.booleans(),
    shape=st.sampled_from(["json", "form", "legacy", "broken json", "query"]),
)
def test_no_error_repeats_a_secret(secret: str, path: str, as_key: bool, shape: str) -> None:
    tree = seed(api_key=secret, openai__api_key=secret + "-openai")
    tree = replace_at(tree, path, {secret: secret} if as_key else secret)
    tree["openai"] = (
        {**tree["openai"], secret: [secret]} if isinstance(tree["openai"], dict) else secret
    )
    tree["email"] = secret  # always at least one error
    request: tuple[str, bytes, dict[str, str] | None]
    if shape == "json":
        request = (JSON, json.dumps(tree).encode(), None)
    elif shape == "form":
        request = (FORM, form_body(tree) + f"&{secret}=1&{secret}[x]=2".encode(), None)
    elif shape == "legacy":
        request = (FORM, urlencode({"key": secret, "extras": json.dumps(tree)}).encode(), None)
    elif shape == "broken json":
        request = (JSON, json.dumps(tree).encode()[:-1], None)
    else:
        request = ("", b"", {secret: secret, f"{secret}[x]": secret, **dict(form_pairs(tree))})

    with pytest.raises(ParamsError) as caught:
        parse_request(*request)

    error = caught.value
    rendered = [str(error), repr(error), json.dumps(error.body()), repr(error.errors)]
    assert not any(secret in r for r in rendered)
    assert error.__context__ is None and error.__cause__ is None


roles = st.sampled_from(["system", "user", "assistant", "developer"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": text}), min_size=1, max_size=4)
small = st.integers(min_value=0, max_value=2**40)
positive = st.integers(min_value=1, max_value=2**40)


@st.composite
def valid_params(draw: st.DrawFn) -> dict[str, Any]:
    openai: dict[str, Any] = {"messages": draw(messages), "api_key": draw(secrets)}
    for name, values in {
        "model": st.sampled_from(["gpt-4o", "gpt-3.5-turbo"]),
        "max_tokens": st.integers(1, 4096),
        "temperature": st.floats(0, 2),
        "n": st.integers(1, 4),
        "logprobs": st.booleans(),
        "stop": st.lists(text.filter(bool), min_size=1, max_size=3),
        "user": text,
    }.items():
        if draw(st.booleans()):
            openai[name] = draw(values)
    tree: dict[str, Any] = {
        "site": draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)),
        "email": draw(st.from_regex(r"[a-z0-9.]{1,10}@[a-z]{1,10}\.com", fullmatch=True)),
        "api_key": draw(secrets),
        "openai": openai,
    }
    if draw(st.booleans()):
        tree["usage_limit"] = draw(
            st.fixed_dictionaries(
                {**dict.fromkeys(SEED["usage_limit"], small), "duration_in_seconds": positive}
            )
        )
    if draw(st.booleans()):
        tree["event_number"] = draw(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True))
    if draw(st.booleans()):
        tree["trigger_criteria"] = draw(st.sampled_from(["true", "", "false", " TRUE "]))
    return tree


def stringified(tree: Any) -> Any:
    """What Liquid renders: every scalar a string."""
    if isinstance(tree, dict):
        return {k: stringified(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [stringified(v) for v in tree]
    return scalar(tree)


@FAST
@given(valid_params())
def test_valid_params_are_equal_in_every_shape(tree: dict[str, Any]) -> None:
    expected = parse_request(JSON, json.dumps(tree).encode())
    envelope = {"key": WEBHOOK_KEY, "site": tree["site"], "type": "event_web_hook"}
    requests = [
        (JSON, json.dumps(stringified(tree)).encode(), None),
        (FORM, form_body(tree), None),
        (FORM, form_body(tree, "indexed"), None),
        (*multipart_body(tree), None),
        (FORM, urlencode({**envelope, "extras": json.dumps(without(tree, "site"))}).encode(), None),
        (JSON, json.dumps({**envelope, "payload": json.dumps(tree)}).encode(), None),
        ("", b"", parse_qs(form_body(tree, "indexed").decode(), keep_blank_values=True)),
        ("", b"", form_body(tree).decode()),
    ]
    for request in requests:
        params = parse_request(*request)
        assert params == expected
        assert request_fingerprint(params) == request_fingerprint(expected)


def leaves(tree: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, (*path, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from leaves(value, (*path, index))
    else:
        yield path, tree


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    return value + "x"


def _reads_as_current_time(tree: dict[str, Any], start: Any) -> bool:
    current = tree["usage_limit"]["current_time"]
    return str(start).isdigit() and str(current).isdigit() and int(start) >= int(current)


@FAST
@given(valid_params(), st.data())
def test_a_changed_param_changes_the_fingerprint(tree: dict[str, Any], data: st.DataObject) -> None:
    path, value = data.draw(st.sampled_from(list(leaves(tree))))
    if path == ("usage_limit", "start_time") and _reads_as_current_time(tree, value):
        return  # a start at or past current_time is read as current_time: moving it is no change
    mutated = copy.deepcopy(tree)
    node: Any = mutated
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = changed(value)
    try:
        after = from_mapping(mutated)
    except ParamsError:
        return  # the change made it invalid (a role, say)

    assert request_fingerprint(after) != request_fingerprint(from_mapping(tree))


# --- values that go into headers, and the usage window's loose ends ---------------------------


@pytest.mark.parametrize("field", ["api_key", "openai.api_key"])
@pytest.mark.parametrize(
    "key",
    [
        "talkable-key\r\nX-Evil: 1",
        "key\x00with-nul",
        "key with spaces",
        "ключ-кириллица",
        "k" * 1025,
        "tab\tinside",
        "del\x7f",
    ],
)
def test_a_key_that_cannot_be_a_header_value_is_refused_naming_the_field(
    field: str, key: str
) -> None:
    path = field.replace(".", "__")
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(**{path: key}))
    assert status_of(caught.value) == 422
    [error] = caught.value.errors
    assert error.field == field and "header" in error.message
    assert key not in json.dumps(caught.value.body())


def test_a_key_with_surrounding_whitespace_is_trimmed_not_refused() -> None:
    params = from_mapping(seed(api_key="  tk-abc123\r\n"))
    assert params.api_key.get_secret_value() == "tk-abc123"


@pytest.mark.parametrize("duration", [0, "0", "00"])
def test_a_usage_window_of_zero_seconds_is_refused(duration: Any) -> None:
    with pytest.raises(ParamsError) as caught:
        from_mapping(seed(usage_limit__duration_in_seconds=duration))
    assert status_of(caught.value) == 422
    [error] = caught.value.errors
    assert error.field == "usage_limit.duration_in_seconds"
    assert "at least 1" in error.message


def test_the_usage_limit_travels_as_the_integers_it_was_validated_into() -> None:
    """What [requests] and the ledger's table carry: the params' integers, read back as they
    were; a future start written before the ingress moved it is moved on reading, and a window
    of no length is refused there too."""
    params = from_mapping(seed(usage_limit__start_time="1699990000"))
    assert params.usage_limit is not None
    limit = UsageLimit.model_validate(params.usage_limit)
    assert limit.model_dump() == params.usage_limit.model_dump()
    assert UsageLimit.model_validate_json(limit.model_dump_json()) == limit
    old = {**limit.model_dump(), "start_time": limit.current_time + 60}
    assert UsageLimit.model_validate_json(json.dumps(old)).start_time == limit.current_time
    with pytest.raises(ValidationError, match="duration_in_seconds"):
        UsageLimit.model_validate_json(json.dumps({**old, "duration_in_seconds": 0}))


def test_a_start_time_in_the_future_is_read_as_the_current_time() -> None:
    params = from_mapping(
        seed(usage_limit__start_time="1700003600", usage_limit__current_time="1700000100")
    )
    assert params.usage_limit is not None
    assert params.usage_limit.start_time == params.usage_limit.current_time == 1700000100
    # a start in the past is the window the person is in: kept
    past = from_mapping(seed(usage_limit__start_time="1699990000"))
    assert past.usage_limit is not None and past.usage_limit.start_time == 1699990000


def test_a_site_is_named_by_its_one_spelling_else_lower_cased() -> None:
    assert site_named(["Shop"]) == "Shop", "one spelling: as its webhooks typed it"
    assert site_named(["Shop", "shop"]) == "shop"
    assert site_named({"SHOP", "Shop"}) == "shop", "several, none lower-cased: the ledger's name"
