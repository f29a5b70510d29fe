"""The slice of SOQL the fake Salesforce understands: SELECT fields FROM object [WHERE ...]
[ORDER BY field] [LIMIT n], with AND/OR/NOT, parentheses, = != < <= > >=, IN, NOT IN, null,
booleans, numbers, quoted strings, datetime and date literals. Unknown fields are refused the way
Salesforce refuses them, and so is a date literal on a dateTime field or a dateTime literal on a
date field (SOQL and SOSL Reference: Date Formats and Date Literals)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')"
    r"|(?P<datetime>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))"
    r"|(?P<date>\d{4}-\d\d-\d\d)"
    r"|(?P<number>-?\d+(?:\.\d+)?)"
    r"|(?P<op><=|>=|!=|<>|=|<|>)"
    r"|(?P<punct>[(),])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Query:
    fields: list[str]
    sobject: str
    where: Callable[[dict[str, Any]], bool]
    order_by: str | None
    limit: int | None


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("+0000", "+00:00"))


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token at: {text[pos : pos + 20]}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class Parser:
    def __init__(self, text: str, schema: dict[str, dict[str, Any]]) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.schema = schema
        self.sobject = ""

    def peek(self, upper: bool = True) -> str:
        if self.i >= len(self.tokens):
            return ""
        value = self.tokens[self.i][1]
        return value.upper() if upper else value

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise SoqlError("MALFORMED_QUERY", "unexpected end of query")
        token = self.tokens[self.i]
        if expected and token[1].upper() != expected:
            raise SoqlError("MALFORMED_QUERY", f"expected {expected}, got {token[1]}")
        self.i += 1
        return token

    def field(self, name: str) -> str:
        fields = self.schema.get(self.sobject)
        if fields is None:
            raise SoqlError("INVALID_TYPE", f"sObject type '{self.sobject}' is not supported.")
        if name not in fields:
            raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{self.sobject}'.")
        return name

    def parse(self) -> Query:
        self.take("SELECT")
        names = [self.take()[1]]
        while self.peek() == ",":
            self.take()
            names.append(self.take()[1])
        self.take("FROM")
        self.sobject = self.take()[1]
        fields = [self.field(n) for n in names]
        where: Callable[[dict[str, Any]], bool] = lambda r: True  # noqa: E731
        order, limit = None, None
        if self.peek() == "WHERE":
            self.take()
            where = self.disjunction()
        if self.peek() == "ORDER":
            self.take()
            self.take("BY")
            order = self.field(self.take()[1])
            if self.peek() in ("ASC",):
                self.take()
        if self.peek() == "LIMIT":
            self.take()
            limit = int(self.take()[1])
        if self.i != len(self.tokens):
            raise SoqlError("MALFORMED_QUERY", f"unexpected token {self.peek(False)}")
        return Query(fields, self.sobject, where, order, limit)

    def disjunction(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self.conjunction()]
        while self.peek() == "OR":
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda r: any(p(r) for p in parts))

    def conjunction(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self.factor()]
        while self.peek() == "AND":
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda r: all(p(r) for p in parts))

    def factor(self) -> Callable[[dict[str, Any]], bool]:
        if self.peek() == "(":
            self.take()
            inner = self.disjunction()
            self.take(")")
            return inner
        if self.peek() == "NOT":
            self.take()
            inner = self.factor()
            return lambda r: not inner(r)
        name = self.field(self.take()[1])
        if self.peek() in ("IN", "NOT"):
            negate = self.take()[1].upper() == "NOT"
            if negate:
                self.take("IN")
            values = self.value_list()
            return lambda r: (_norm(r.get(name)) in values) != negate
        op = self.take()[1]
        value = self.value()
        self.check_type(name, value)
        return lambda r: _compare(r.get(name), op, value)

    def check_type(self, name: str, value: Any) -> None:
        is_date = (self.schema.get(self.sobject) or {}).get(name, {}).get("type") == "date"
        wanted = None
        if isinstance(value, datetime) and is_date:
            wanted = "date"
        elif isinstance(value, date) and not isinstance(value, datetime) and not is_date:
            wanted = "dateTime"
        if wanted:
            raise SoqlError(
                "INVALID_FIELD",
                f"value of filter criterion for field '{name}' must be of type {wanted} and "
                "should not be enclosed in quotes",
            )

    def value_list(self) -> set[Any]:
        self.take("(")
        values = {self.value()}
        while self.peek() == ",":
            self.take()
            values.add(self.value())
        self.take(")")
        return values

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "datetime":
            return parse_instant(text)
        if kind == "date":
            return date.fromisoformat(text)
        if kind == "number":
            return float(text)
        upper = text.upper()
        if upper in ("TRUE", "FALSE"):
            return upper == "TRUE"
        if upper == "NULL":
            return None
        raise SoqlError("MALFORMED_QUERY", f"unexpected value {text}")


def _norm(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if expected is None:
        return (actual is None) if op == "=" else (actual is not None)
    if actual is None:
        return op in ("!=", "<>")
    if isinstance(expected, datetime):
        actual = parse_instant(str(actual))
    elif isinstance(expected, date):
        actual = date.fromisoformat(str(actual)[:10])
    actual = _norm(actual)
    return {
        "=": actual == expected,
        "!=": actual != expected,
        "<>": actual != expected,
        "<": actual < expected,
        "<=": actual <= expected,
        ">": actual > expected,
        ">=": actual >= expected,
    }[op]


def parse(text: str, schema: dict[str, dict[str, Any]]) -> Query:
    return Parser(text, schema).parse()
