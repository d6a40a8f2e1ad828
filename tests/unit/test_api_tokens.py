# SPDX-License-Identifier: MIT
"""Bearer tokens: the table of valid tokens already seen answers as the full scan does,
never remembers a wrong token, and is bounded."""

from __future__ import annotations

from fastmta.api import tokens


def test_seen_tokens_answer_as_the_scan_and_wrong_ones_are_not_kept() -> None:
    (a, line_a), (b, line_b) = tokens.new("shop"), tokens.new("crm")
    table = tokens.Tokens(tokens.parse(f"{line_a}\n{line_b}\n"))
    for _ in range(2):  # the first answer scans, the second comes from the table
        assert table.check(a) == "shop" and table.check(b) == "crm"
        assert table.check(a + "x") is None and table.check("") is None
    assert len(table._seen) == 2 and len(table) == 2


def test_a_reloaded_file_drops_what_the_old_table_saw() -> None:
    (a, line_a), (b, line_b) = tokens.new("shop"), tokens.new("crm")
    old = tokens.Tokens(tokens.parse(f"{line_a}\n{line_b}\n"))
    assert old.check(a) == "shop"
    new = tokens.Tokens(tokens.parse(f"{line_b}\n"))  # what a SIGHUP builds from the edited file
    assert new.check(a) is None and new.check(b) == "crm"


def test_the_table_is_bounded() -> None:
    made = [tokens.new(f"t{i}") for i in range(tokens.SEEN_MAX + 1)]
    table = tokens.Tokens(tokens.parse("\n".join(line for _, line in made)))
    for token, _ in made[: tokens.SEEN_MAX]:
        table.check(token)
    assert len(table._seen) == tokens.SEEN_MAX
    assert table.check(made[-1][0]) == f"t{tokens.SEEN_MAX}"
    assert len(table._seen) == 1
