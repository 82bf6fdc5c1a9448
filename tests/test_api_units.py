"""
Tests for the pure parts of L{realtimed.api}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.api import APIError, strip_outer_parentheses

# Expressions as pg_get_expr writes them: no enclosing pair of their own.
bare_expressions = st.sampled_from(
    [
        "true",
        "enabled = true",
        "(a = 1) AND (b = 2)",
        "f(x) = g(y)",
        "channel_name ~~ 'a)(b'::text",
        "\"odd(name\" = 'x'",
        "(a) OR (b)",
    ]
)


class StripOuterParenthesesTests(SynchronousTestCase):
    """
    L{strip_outer_parentheses} undoes the parentheses C{pg_policies} adds.
    """

    def test_examples(self) -> None:
        """
        One enclosing pair goes; pairs that do not enclose everything, and
        parentheses in literals, stay.
        """
        cases = {
            "(enabled = true)": "enabled = true",
            "true": "true",
            "((a = 1) AND (b = 2))": "(a = 1) AND (b = 2)",
            "(a = 1) AND (b = 2)": "(a = 1) AND (b = 2)",
            "(x = ')')": "x = ')'",
            "('(' = x)": "'(' = x",
            "((x))": "(x)",
            "(unbalanced": "(unbalanced",
            "()": "",
        }
        for given_, expected in cases.items():
            self.assertEqual(strip_outer_parentheses(given_), expected, given_)

    @given(bare_expressions)
    def test_round_trip(self, expression: str) -> None:
        """
        Wrapping an expression in one pair and stripping gives it back.
        """
        self.assertEqual(strip_outer_parentheses(f"({expression})"), expression)

    @given(bare_expressions)
    def test_bare_unchanged(self, expression: str) -> None:
        """
        An expression without an enclosing pair is left as it is.
        """
        self.assertEqual(strip_outer_parentheses(expression), expression)

    @given(st.text(max_size=30))
    def test_any_text(self, text: str) -> None:
        """
        Any text comes back unchanged or with one enclosing pair removed.
        """
        result = strip_outer_parentheses(text)
        self.assertIn(result, (text, text.strip()[1:-1].strip()))


class APIErrorTests(SynchronousTestCase):
    """
    L{APIError}.
    """

    def test_body(self) -> None:
        """
        The body is the reference's error shape.
        """
        self.assertEqual(
            APIError(404, "NOT_FOUND", "Channel not found").body(),
            {"error": "NOT_FOUND", "message": "Channel not found", "statusCode": 404},
        )
