"""The agent's tools: harmless, deterministic enough to test, and safe to expose to any model."""

from __future__ import annotations

import ast
import datetime as _dt
import operator

from langchain_core.tools import tool

# Only plain arithmetic: a model (or a user talking to it) must never reach eval().
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# Keeps `9**9**9` from pinning a core for minutes.
_MAX_EXPONENT = 100


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression of numbers, + - * / // % ** and parentheses.

    Raises ValueError for anything else (names, calls, huge exponents, division by zero).
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc
    return _eval(tree.body)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise ValueError("division by zero") from exc
    raise ValueError(f"unsupported element in expression: {ast.dump(node)[:60]}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as "6 * 7" or "(2 + 3) ** 2" and return the result."""
    try:
        result = evaluate(expression)
    except ValueError as exc:
        # Returned, not raised: the model sees the problem and can answer the user about it.
        return f"error: {exc}"
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(result)


@tool
def clock() -> str:
    """Return the current UTC date and time in ISO 8601 format."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@tool
def purchase(item: str) -> str:
    """Buy ``item`` for the user. This spends real money: the graph asks a human before calling it."""
    # An example: a real agent would call a payment API here, once, with an idempotency key.
    return f"bought {item}"


# Tools whose call spends money; the graph interrupts for a human's approval before running them.
purchase.metadata = {"costs_money": True}

TOOLS = [calculator, clock, purchase]


def costs_money(tool_name: str) -> bool:
    return any(t.name == tool_name and (t.metadata or {}).get("costs_money") for t in TOOLS)
