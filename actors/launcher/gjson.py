"""The part of GJSON path syntax that Katib's successCondition and failureCondition use.

Katib decides a trial's end by running a GJSON path over its job's JSON: the trial matches when the result
is an object or a non-empty array (`matches`), and the first element carries ``reason`` and ``message``.
Supported here:

- keys separated by ``.`` (``\\.`` escapes a dot in a key), array indexes (``items.0``);
- ``#`` (an array's length; ``#.key`` maps ``key`` over the elements);
- queries ``#(key op value)`` (the first matching element) and ``#(key op value)#`` (every one, after which
  ``.key`` maps over them); ``op`` is ``==``, ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``%`` (glob match)
  or ``!%``; ``value`` is a JSON string, number, ``true``, ``false`` or ``null``; ``key`` may be a nested
  path, another query, or empty (the element itself); ``#(key)`` alone tests that ``key`` exists;
- ``|``: the rest of the path applies to the result as a whole (``...#(type=="Complete")#|#(status=="True")#``);
- ``@this`` (the current value) and multipaths ``[a,b]`` (an array of each path's result), as in Argo's
  ``status.[@this].#(phase=="Succeeded")#``.

`compile_path(text)` checks a path once and raises GJSONError naming the position and reason.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MISSING", "GJSONError", "Path", "compile_path", "get", "matches"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_OPS = ("==", "!=", "<=", ">=", "!%", "<", ">", "=", "%")


class GJSONError(ValueError):
    """A path natib cannot evaluate, with the reason and position."""


@dataclass(frozen=True)
class _Step:
    sep: str  # "." or "|" (the separator before this step; "." for the first)
    token: str


@dataclass(frozen=True)
class _Query:
    path: Path | None  # None: the element itself
    op: str | None  # None: an existence test
    value: Any
    all: bool

    def test(self, element: Any) -> bool:
        left = element if self.path is None else self.path.get(element)
        if self.op is None:
            return left is not MISSING
        if left is MISSING:
            return False
        return _compare(left, self.op, self.value)


def _compare(left: Any, op: str, right: Any) -> bool:
    if op in ("%", "!%"):
        if not isinstance(left, str) or not isinstance(right, str):
            return op == "!%"
        return fnmatch.fnmatchcase(left, right) == (op == "%")
    if op in ("==", "="):
        return _same_type(left, right) and left == right
    if op == "!=":
        return not (_same_type(left, right) and left == right)
    if not _same_type(left, right) or isinstance(left, bool) or left is None:
        return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _same_type(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return type(a) is type(b)


def _split(text: str, seps: str, where: int) -> list[tuple[str, str, int]]:
    """Split at top-level separators (outside quotes, parentheses and brackets): (separator, part, offset)."""
    parts: list[tuple[str, str, int]] = []
    depth, quote, start, sep = 0, False, 0, "."
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == '"':
                quote = False
        elif c == "\\":
            i += 1
        elif c == '"':
            quote = True
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth < 0:
                raise GJSONError(f"unbalanced {c!r} at position {where + i}")
        elif depth == 0 and c in seps:
            parts.append((sep, text[start:i], where + start))
            sep, start = c, i + 1
        i += 1
    if quote:
        raise GJSONError(f"unterminated string in {text!r}")
    if depth:
        raise GJSONError(f"unbalanced parentheses or brackets in {text!r}")
    parts.append((sep, text[start:], where + start))
    return parts


def _literal(text: str, where: int) -> Any:
    text = text.strip()
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise GJSONError(f"bad string {text} at position {where}") from exc
        if not isinstance(value, str):
            raise GJSONError(f"bad string {text} at position {where}")
        return value
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError as exc:
        raise GJSONError(f"expected a string, number, true, false or null at position {where}, got {text!r}") from exc


def _query(token: str, where: int) -> _Query:
    every = token.endswith(")#")
    body = token[2:-2] if every else token[2:-1]
    if not token.endswith(")" if not every else ")#"):
        raise GJSONError(f"query at position {where} must end with ')' or ')#'")
    depth, quote = 0, False
    for i, c in enumerate(body):
        if quote:
            if c == '"' and body[i - 1] != "\\":
                quote = False
            continue
        if c == '"':
            quote = True
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif depth == 0:
            op = next((o for o in _OPS if body.startswith(o, i)), None)
            if op is not None:
                key = body[:i].strip()
                value = _literal(body[i + len(op):], where + 2 + i + len(op))
                path = Path(key, where + 2) if key else None
                return _Query(path=path, op=op, value=value, all=every)
    key = body.strip()
    if not key:
        raise GJSONError(f"empty query at position {where}")
    return _Query(path=Path(key, where + 2), op=None, value=None, all=every)


class Path:
    """A compiled GJSON path; ``get(doc)`` evaluates it (MISSING when nothing is there)."""

    def __init__(self, text: str, where: int = 0) -> None:
        self.text = text
        if not text.strip():
            raise GJSONError("empty path")
        self._steps: list[tuple[str, Callable[[Any], Any] | None, str]] = []
        for sep, token, at in _split(text, ".|", where):
            if not token:
                raise GJSONError(f"empty path component at position {at}")
            self._steps.append((sep, self._compile(token, at), token))

    def _compile(self, token: str, at: int) -> Callable[[Any], Any] | None:
        if token == "#":
            return None  # length, or a map over the elements: handled in get()
        if token.startswith("#("):
            q = _query(token, at)
            return lambda v, q=q: q  # type: ignore[misc]
        if token == "@this":
            return lambda v: v
        if token.startswith("@"):
            raise GJSONError(f"unsupported modifier {token!r} at position {at}")
        if token.startswith("["):
            if not token.endswith("]"):
                raise GJSONError(f"multipath at position {at} must end with ']'")
            paths = [Path(part, off) for _sep, part, off in _split(token[1:-1], ",", at + 1)]
            return lambda v, paths=paths: [r for p in paths if (r := p.get(v)) is not MISSING]
        if token.startswith("{"):
            raise GJSONError(f"object multipaths are not supported (position {at})")
        key = token.replace("\\.", ".").replace("\\|", "|").replace("\\#", "#")
        if any(c in key for c in "*?"):
            raise GJSONError(f"wildcards are not supported (position {at})")

        def field(v: Any, key: str = key) -> Any:
            if isinstance(v, dict):
                return v.get(key, MISSING)
            if isinstance(v, list) and key.isdigit():
                index = int(key)
                return v[index] if index < len(v) else MISSING
            return MISSING

        return field

    def get(self, doc: Any) -> Any:
        """The value at this path in ``doc`` (parsed JSON), or MISSING."""
        return self._run(doc, 0)

    def _run(self, value: Any, i: int) -> Any:
        steps = self._steps
        while i < len(steps):
            if value is MISSING:
                return MISSING
            _sep, fn, _token = steps[i]
            mapping_next = i + 1 < len(steps) and steps[i + 1][0] == "."
            if fn is None:  # "#"
                if not isinstance(value, list):
                    return MISSING
                if mapping_next:
                    return self._map(value, i + 1)
                value = len(value)
                i += 1
                continue
            result = fn(value)
            if isinstance(result, _Query):
                if not isinstance(value, list):
                    return MISSING
                if result.all:
                    found = [e for e in value if result.test(e)]
                    if mapping_next:
                        return self._map(found, i + 1)
                    value = found
                else:
                    value = next((e for e in value if result.test(e)), MISSING)
            else:
                value = result
            i += 1
        return value

    def _map(self, elements: list[Any], start: int) -> Any:
        """Apply the steps up to the next ``|`` to each element, then the rest to the collected list."""
        end = next((j for j in range(start, len(self._steps)) if self._steps[j][0] == "|"), len(self._steps))
        sub = Path.__new__(Path)
        sub.text, sub._steps = self.text, self._steps[start:end]
        collected = [r for e in elements if (r := sub._run(e, 0)) is not MISSING]
        return self._run(collected, end) if end < len(self._steps) else collected


_cache: dict[str, Path] = {}


def compile_path(text: str) -> Path:
    """The compiled path (cached); GJSONError names what is wrong."""
    if not isinstance(text, str):
        raise GJSONError(f"expected a string, got {type(text).__name__}")
    path = _cache.get(text)
    if path is None:
        path = _cache[text] = Path(text)
    return path


def get(doc: Any, path: str) -> Any:
    """Evaluate ``path`` over ``doc``; MISSING when nothing matches."""
    return compile_path(path).get(doc)


def matches(doc: Any, path: str) -> dict[str, Any] | None:
    """Katib's test: the first element (or the object) when the result is an object or a non-empty array, else None.

    The returned dict is where Katib reads ``reason`` and ``message``; a matched non-object element gives {}.
    """
    result = get(doc, path)
    if isinstance(result, dict):
        return result
    if isinstance(result, list) and result:
        first = result[0]
        return first if isinstance(first, dict) else {}
    return None
