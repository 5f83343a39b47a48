"""network.rules: parsing, path matching and the decision for a request, case by case."""

from __future__ import annotations

import pytest

from moat.policy.rules import NetworkPolicy, RuleError, match_path, parse_host_rules, parse_rule

# (pattern, path, matches)
PATHS = [
    ("/", "/", True),
    ("/", "/a", False),
    ("/**", "/", True),
    ("/**", "/a/b/c", True),
    ("/repos/**", "/repos", False),  # ** after a segment needs something below it
    ("/repos/**", "/repos/", False),
    ("/repos/**", "/repos/o", True),
    ("/repos/**", "/repos/o/r/issues", True),
    ("/repos/*", "/repos/o", True),
    ("/repos/*", "/repos/o/r", False),
    ("/repos/*/issues", "/repos/o/issues", True),
    ("/repos/*/issues", "/repos/o/r/issues", False),
    ("/repos/**/issues", "/repos/o/r/issues", True),
    ("/repos/**/issues", "/repos/issues", False),
    ("/a/**/b/**", "/a/x/b/y", True),
    ("/a/**/b/**", "/a/b/y", False),
    ("/user", "/user", True),
    ("/user", "/user/", True),  # a trailing slash is the same path
    ("/user", "/users", False),
    ("/user", "/user?tab=repos", True),  # the query is not the path
    ("/user", "//user", True),  # repeated slashes collapse
    ("/admin/**", "/repos/../admin/x", True),  # dot segments resolved
    ("/admin/**", "/repos/..%2F..%2Fadmin/x", True),  # even encoded
    ("/admin/**", "/%61dmin/x", True),  # an encoded letter is the letter
    ("/repos/**", "/repos/../admin", False),
    ("/repos/**", "/repos/%2e%2e/admin", False),
    ("/a b", "/a%20b", True),
    ("/API", "/api", False),  # paths are case-sensitive
    # As lenient servers read them (review): ';' parameters are not the segment's name, '\' is '/'.
    ("/public/**", "/public/..;/admin", False),
    ("/admin/**", "/public/..;/admin/x", True),
    ("/public/**", "/public/..%5cadmin", False),
    ("/public/**", "/public/..\\admin", False),
    ("/public/**", "/public/x;jsessionid=1/y", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), PATHS)
def test_path_matching(pattern: str, path: str, expected: bool) -> None:
    assert match_path(pattern, path) is expected


@pytest.mark.parametrize(("text", "action", "method", "pattern"), [
    ("allow GET /repos/**", "allow", "GET", "/repos/**"),
    ("deny * /admin/**", "deny", "*", "/admin/**"),
    ("ALLOW post /graphql", "allow", "POST", "/graphql"),
    ("  deny   DELETE   /x  ", "deny", "DELETE", "/x"),
])
def test_rules_parse(text: str, action: str, method: str, pattern: str) -> None:
    rule = parse_rule(text)
    assert (rule.action, rule.method, rule.pattern) == (action, method, pattern)


@pytest.mark.parametrize(("text", "says"), [
    ("alow GET /x", "neither allow nor deny"),
    ("allow GRAB /x", "not an HTTP method"),
    ("allow GET x", "must start with /"),
    ("allow GET", "must read"),
    ("allow GET /x extra", "must read"),
    ("allow GET /repo*", "whole path segment"),
    ("allow GET /a/**/**", r"'\*\*/\*\*' is"),
    ("allow GET /search?q=1", "drop the query"),  # would otherwise allow every query (review)
    ("allow GET /a;b", "drop the query"),
    ("allow GET /a#frag", "drop the query"),
    ("alow GET /x", "did you mean 'allow'"),
    ("allow GTE /x", "did you mean 'GET'"),
])
def test_bad_rules_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(RuleError, match=says):
        parse_rule(text)


@pytest.mark.parametrize("host", ["https://api.github.com", "api.github.com/repos", "*.*.com", "a*.com", "",
                                  "exämple.com"])
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(RuleError):
        parse_host_rules(host, [])


GITHUB = parse_host_rules("api.github.com", ["allow GET /repos/**", "deny * /repos/*/*/actions/**",
                                             "allow POST /graphql"])
STRICT = NetworkPolicy(True, (GITHUB, parse_host_rules("*.npmjs.org", [])), granted=("github.com",))
PERMISSIVE = NetworkPolicy(False, STRICT.hosts, STRICT.granted)

# (policy, host, method, path, allowed)
DECISIONS = [
    (STRICT, "api.github.com", "GET", "/repos/o/r", True),
    (STRICT, "API.GitHub.com.", "get", "/repos/o/r", True),  # names and methods in any case
    (STRICT, "api.github.com", "POST", "/repos/o/r", False),  # no rule for POST there: strict denies
    (STRICT, "api.github.com", "GET", "/repos/o/r/actions/runs", True),  # first match wins: the allow
    (STRICT, "api.github.com", "DELETE", "/repos/o/r/actions/runs", False),  # the deny
    (STRICT, "api.github.com", "POST", "/graphql", True),
    (STRICT, "api.github.com", "GET", "/user", False),
    (STRICT, "registry.npmjs.org", "GET", "/left-pad", True),  # a host entry without rules
    (STRICT, "npmjs.org", "GET", "/", False),  # *.x is not x
    (STRICT, "github.com", "GET", "/o/r.git/info/refs", True),  # a grant's host
    (STRICT, "evil.example", "GET", "/", False),
    (PERMISSIVE, "evil.example", "GET", "/", True),
    (PERMISSIVE, "api.github.com", "PUT", "/user", True),  # no rule matches: permissive allows
    (PERMISSIVE, "api.github.com", "DELETE", "/repos/o/r/actions/x", False),  # but a deny denies
]


@pytest.mark.parametrize(("policy", "host", "method", "path", "allowed"), DECISIONS)
def test_decisions(policy: NetworkPolicy, host: str, method: str, path: str, allowed: bool) -> None:
    decision = policy.decide(host, method, path)
    assert decision.allowed is allowed, decision.why
    assert decision.why


def test_a_refusal_says_why_in_words_a_human_can_act_on() -> None:
    assert STRICT.decide("evil.example", "GET", "/").why == \
        "evil.example is not in network.rules (network.policy: strict)"
    assert "'deny * /repos/*/*/actions/**' for api.github.com denies it" in \
        STRICT.decide("api.github.com", "DELETE", "/repos/o/r/actions/x").why


@pytest.mark.parametrize(("policy", "host", "allowed"), [
    (STRICT, "api.github.com", True),  # listed (its requests are judged inside the tunnel)
    (STRICT, "github.com", True),  # a grant's host
    (STRICT, "a.npmjs.org", True),
    (STRICT, "evil.example", False),
    (PERMISSIVE, "evil.example", True),
])
def test_which_tunnels_may_open(policy: NetworkPolicy, host: str, allowed: bool) -> None:
    assert policy.admits_host(host).allowed is allowed


def test_a_policy_survives_the_trip_to_the_proxy_and_a_bad_one_does_not_load() -> None:
    assert NetworkPolicy.from_json(STRICT.to_json()) == STRICT
    for bad in ({"hosts": "x"}, {"hosts": [{"host": "a.example", "rules": ["alow GET /"]}]}, {"hosts": [5]}):
        with pytest.raises(RuleError):
            NetworkPolicy.from_json(bad)  # type: ignore[arg-type]


def test_a_unicode_name_is_refused_with_the_name_dns_carries() -> None:
    with pytest.raises(RuleError, match=r"xn--exmple-cua\.com"):
        parse_host_rules("exämple.com", ())


@pytest.mark.parametrize("host", ["2001:db8::1", "[2001:db8::1]", "192.0.2.7"])
def test_an_address_can_be_listed_as_a_refusal_suggests_it(host: str) -> None:
    entry = parse_host_rules(host, ())
    assert NetworkPolicy(True, (entry,)).decide(host, "GET", "/").allowed


def test_a_suggested_rule_always_parses() -> None:
    from moat.policy.rules import Decision, refusal_text

    for path in ("/a*b/c", "/x/..;/admin", "/search?q=1", "/a%5cb", "/My%20File.md", "/a%09b", "/x%0Ay"):
        body = refusal_text("api.example.test", "GET", path, Decision(False, "no"), tunnel=False)
        suggested = body.rstrip().splitlines()[-1].strip().removeprefix("- ")
        parse_rule(suggested)  # must not raise
