"""A PromQL parser for checking dashboards and alert rules offline (promtool is not at hand).

It parses the language the way Prometheus does (operator precedence, aggregations with `by`/`without`
before or after, function calls, selectors with matchers, ranges, subqueries, `offset`, `@`, vector-matching
modifiers) and rejects what Prometheus would: unknown functions, unbalanced brackets, a function that needs
a range vector given an instant one, an instant selector without a metric name or a non-empty matcher.
Grafana's interval macros (`$__rate_interval`, ...) count as durations and `$variables` may appear in label
values, as they do in a dashboard's queries. `selectors(expr)` lists every (metric name, matched labels) an
expression reads, to be checked against what a server's /metrics exports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
PARAMETER_AGGREGATIONS = frozenset({"count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
# Functions whose listed argument positions take a range vector (a selector[range] or a subquery).
RANGE_FUNCTIONS: dict[str, int] = {
    **{
        name: 0
        for name in [
            "rate",
            "irate",
            "increase",
            "delta",
            "idelta",
            "deriv",
            "changes",
            "resets",
            "absent_over_time",
            "present_over_time",
            "avg_over_time",
            "min_over_time",
            "max_over_time",
            "sum_over_time",
            "count_over_time",
            "stddev_over_time",
            "stdvar_over_time",
            "last_over_time",
            "mad_over_time",
            "predict_linear",
            "holt_winters",
            "double_exponential_smoothing",
            "ts_of_max_over_time",
            "ts_of_min_over_time",
            "ts_of_last_over_time",
        ]
    },
    "quantile_over_time": 1,
}
FUNCTIONS = frozenset(RANGE_FUNCTIONS) | frozenset(
    [
        "abs",
        "absent",
        "ceil",
        "clamp",
        "clamp_max",
        "clamp_min",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "hour",
        "label_join",
        "label_replace",
        "ln",
        "log2",
        "log10",
        "minute",
        "month",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sort_by_label",
        "sort_by_label_desc",
        "sqrt",
        "time",
        "timestamp",
        "vector",
        "year",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "cos",
        "cosh",
        "sin",
        "sinh",
        "tan",
        "tanh",
        "deg",
        "rad",
        "pi",
        "info",
    ]
)
KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS |= {"offset", "bool", "atan2"}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+(?![\w.]))
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|nan)(?![\w:]))
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$(?:\{[\w.:]+\}|\w+))
  | (?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],:@])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    """The expression is not valid PromQL; the message says where."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise PromQLError(f"unexpected character {text[position]!r} at {position} in {text!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(Token(kind, match.group(), position))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


@dataclass(frozen=True)
class Selector:
    name: str  # "" when selected by matchers only
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)
    range: bool = False


@dataclass
class Expr:
    """A parsed expression: its kind ('vector', 'range', 'scalar', 'string') and the selectors it reads."""

    kind: str
    selectors: list[Selector] = field(default_factory=list)
    bare: bool = False  # a selector as written (a range may follow it)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    # -- tokens ----------------------------------------------------------------------------------------

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def error(self, message: str) -> PromQLError:
        return PromQLError(f"{message} at {self.token.position} in {self.text!r}")

    def take(self, text: str | None = None, kind: str | None = None) -> Token:
        token = self.token
        if (text is not None and token.text != text) or (kind is not None and token.kind != kind):
            raise self.error(f"expected {text or kind}, found {token.text or 'the end'!r}")
        self.index += 1
        return token

    def at(self, *texts: str) -> bool:
        return self.token.kind in ("op", "ident") and self.token.text in texts

    # -- grammar ---------------------------------------------------------------------------------------

    def parse(self) -> Expr:
        expr = self.expression(0)
        if self.token.kind != "end":
            raise self.error(f"unexpected {self.token.text!r}")
        return expr

    LEVELS: tuple[frozenset[str], ...] = (
        frozenset({"or"}),
        frozenset({"and", "unless"}),
        frozenset({"==", "!=", ">", "<", ">=", "<="}),
        frozenset({"+", "-"}),
        frozenset({"*", "/", "%", "atan2"}),
        frozenset({"^"}),
    )

    def expression(self, level: int) -> Expr:
        if level == len(self.LEVELS):
            return self.unary()
        left = self.expression(level + 1)
        while self.token.kind in ("op", "ident") and self.token.text in self.LEVELS[level]:
            operator = self.take().text
            self.binary_modifiers()
            # `^` is right-associative; the rest associate to the left.
            right = self.expression(level if operator == "^" else level + 1)
            left = self.combine(operator, left, right)
        return left

    def binary_modifiers(self) -> None:
        if self.at("bool"):
            self.take()
        if self.at("on", "ignoring"):
            self.take()
            self.labels()
            if self.at("group_left", "group_right"):
                self.take()
                if self.at("("):
                    self.labels()

    def combine(self, operator: str, left: Expr, right: Expr) -> Expr:
        for side in (left, right):
            if side.kind in ("range", "string"):
                raise self.error(f"operator {operator!r} cannot take a {side.kind}")
        if operator in ("and", "or", "unless") and "scalar" in (left.kind, right.kind):
            raise self.error(f"set operator {operator!r} needs vectors on both sides")
        kind = "scalar" if left.kind == right.kind == "scalar" else "vector"
        return Expr(kind, left.selectors + right.selectors)

    def unary(self) -> Expr:
        if self.at("-", "+"):
            self.take()
            inner = self.unary()
            if inner.kind not in ("scalar", "vector"):
                raise self.error("a sign needs a number or a vector")
            return inner
        return self.postfix(self.primary())

    def postfix(self, expr: Expr) -> Expr:
        while True:
            if self.at("["):
                self.take("[")
                self.duration()
                if self.at(":"):  # subquery: [range:resolution]
                    self.take(":")
                    if not self.at("]"):
                        self.duration()
                    if expr.kind != "vector":
                        raise self.error("a subquery needs an instant vector")
                    self.take("]")
                    expr = Expr("range", expr.selectors)
                    continue
                self.take("]")
                if not expr.bare:
                    raise self.error("a range needs a bare selector; use a subquery [range:] instead")
                expr = Expr("range", [Selector(s.name, s.matchers, True) for s in expr.selectors])
            elif self.at("offset"):
                self.take()
                if self.at("-"):
                    self.take()
                self.duration()
            elif self.at("@"):
                self.take()
                if self.at("start", "end"):
                    self.take()
                    self.take("(")
                    self.take(")")
                else:
                    self.take(kind="number")
            else:
                return expr

    def primary(self) -> Expr:
        token = self.token
        if token.kind == "number":
            self.take()
            return Expr("scalar")
        if token.kind == "string":
            self.take()
            return Expr("string")
        if token.kind == "duration":  # Prometheus 3 accepts a duration as a number of seconds
            self.take()
            return Expr("scalar")
        if token.text == "(":
            self.take("(")
            inner = self.expression(0)
            self.take(")")
            return Expr(inner.kind, inner.selectors)  # no longer bare: `(x)[5m]` is not PromQL
        if token.text == "{":
            return self.selector("")
        if token.kind == "ident":
            name = token.text
            following = self.tokens[self.index + 1].text
            if name in AGGREGATIONS and following in ("(", "by", "without"):
                return self.aggregation()
            if following == "(":
                return self.call()
            if name in KEYWORDS:
                raise self.error(f"unexpected keyword {name!r}")
            self.take()
            return self.selector(name)
        raise self.error(f"unexpected {token.text or 'end'!r}")

    def duration(self) -> None:
        """A duration (5m, 1h30m), or one of Grafana's interval macros ($__rate_interval, ...)."""
        if self.token.kind == "variable":
            self.take()
            return
        self.take(kind="duration")

    def labels(self) -> list[str]:
        self.take("(")
        names: list[str] = []
        while not self.at(")"):
            names.append(self.take(kind="ident").text)
            if not self.at(")"):
                self.take(",")
        self.take(")")
        return names

    def selector(self, name: str) -> Expr:
        matchers: list[tuple[str, str, str]] = []
        if self.at("{"):
            self.take("{")
            while not self.at("}"):
                label = self.token.text if self.token.kind in ("ident", "string") else ""
                if not label:
                    raise self.error("expected a label name")
                self.take()
                operator = self.take().text
                if operator not in ("=", "!=", "=~", "!~"):
                    raise self.error(f"{operator!r} is not a label matcher")
                value = self.take(kind="string").text[1:-1]
                matchers.append((label.strip("\"'"), operator, value))
                if not self.at("}"):
                    self.take(",")
            self.take("}")
        names = [value for label, op, value in matchers if label == "__name__" and op == "="]
        if not name and names:
            name = names[0]
        if not name and not any(op in ("=", "=~") and value not in ("", ".*") for _, op, value in matchers):
            raise self.error("a selector needs a metric name or a matcher that is not empty")
        return Expr("vector", [Selector(name, tuple(matchers))], bare=True)

    def call(self) -> Expr:
        name = self.take(kind="ident").text
        if name not in FUNCTIONS:
            raise self.error(f"unknown function {name!r}")
        self.take("(")
        arguments: list[Expr] = []
        while not self.at(")"):
            arguments.append(self.expression(0))
            if not self.at(")"):
                self.take(",")
        self.take(")")
        needs_range = RANGE_FUNCTIONS.get(name)
        if needs_range is not None and (
            len(arguments) <= needs_range or arguments[needs_range].kind != "range"
        ):
            raise self.error(f"{name}() needs a range vector (a selector[range] or a subquery)")
        for position, argument in enumerate(arguments):
            if argument.kind == "range" and position != needs_range:
                raise self.error(f"{name}() takes no range vector as argument {position + 1}")
        kind = "scalar" if name in ("scalar", "time", "pi") else "vector"
        return Expr(kind, [s for a in arguments for s in a.selectors])

    def aggregation(self) -> Expr:
        operator = self.take(kind="ident").text
        if self.at("by", "without"):
            self.take()
            self.labels()
        self.take("(")
        selectors: list[Selector] = []
        if operator in PARAMETER_AGGREGATIONS:
            parameter = self.expression(0)
            selectors += parameter.selectors
            self.take(",")
        inner = self.expression(0)
        if inner.kind != "vector":
            raise self.error(f"{operator}() needs an instant vector")
        self.take(")")
        if self.at("by", "without"):
            self.take()
            self.labels()
        return Expr("vector", selectors + inner.selectors)


def parse(text: str) -> Expr:
    """The parsed expression; PromQLError says what is wrong and where."""
    return _Parser(text).parse()


def selectors(text: str) -> list[Selector]:
    """Every selector the expression reads."""
    return parse(text).selectors
