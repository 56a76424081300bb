"""Extraction instruction and the tolerant notes parser."""

from hypothesis import given, settings
from hypothesis import strategies as st

from collabthink.sharing.notes import (
    MAX_NOTE_CHARS,
    NOTES_CLOSE,
    NOTES_OPEN,
    Note,
    extraction_instruction,
    fresh_extraction_messages,
    parse_notes,
)

I = "insight"
P = "pitfall"


def test_instruction_lists_own_notes_and_format():
    text = extraction_instruction(["n is odd", Note(P, "x may be 0")], max_notes=3)
    assert text.startswith("Pause.")
    assert "up to 3" in text
    assert "- n is odd" in text and "- (type=pitfall) x may be 0" in text
    assert NOTES_CLOSE in text and NOTES_OPEN not in text  # the caller opens the block after it
    assert "..." not in text  # shown placeholders get copied verbatim by small models
    assert "(type=insight)" in text and "(type=pitfall)" in text
    assert "earlier notes" not in extraction_instruction([])
    assert len(text) < 1000  # small models read it; keep it compact


def test_fresh_messages():
    msgs = fresh_extraction_messages("Find x.", "We have x^2 = 4.", ["x is real"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "Find x." in user and "We have x^2 = 4." in user and "x is real" in user
    assert user.index("We have x^2 = 4.") < user.index(NOTES_CLOSE)


# Real Qwen2.5-1.5B replies: placeholders copied from a format example, and sentences wrapped in tags.
def test_placeholders_and_wrapper_tags_from_real_replies():
    copied = "- (type=insight) ...\n- (type=pitfall) ...\n</notes>"
    assert parse_notes(copied, finished=True) == []
    wrapped = ("insight) <fact>After breakfast, there are 13 eggs left.</fact>\n"
               "- (type=insight) <fact>After muffins, there are 9 eggs left.</fact>\n")
    assert parse_notes("- (type=" + wrapped, finished=True) == [
        Note(I, "After breakfast, there are 13 eggs left."), Note(I, "After muffins, there are 9 eggs left.")]


def test_accepted_bullet_styles():
    out = parse_notes(
        "<notes>\n"
        "- (type=insight) a+b = 7\n"
        "* (type = Insight) ab = 12\n"
        "- (insight) the roots are integers\n"
        "- [pitfall] dividing by x loses x = 0\n"
        "2. (PITFALL): case n = 1 is missing\n"
        "</notes>",
        finished=True,
    )
    assert out == [
        Note(I, "a+b = 7"),
        Note(I, "ab = 12"),
        Note(I, "the roots are integers"),
        Note(P, "dividing by x loses x = 0"),
        Note(P, "case n = 1 is missing"),
    ]


def test_without_open_tag_and_text_after_close_ignored():
    text = "- (type=insight) f is even\n</notes>\n- (type=insight) after close"
    assert parse_notes(text, finished=True) == [Note(I, "f is even")]
    # preamble before the opening tag is ignored
    text = "Some thinking\n- (type=insight) stray\n<notes>\n- (type=pitfall) p\n</notes>"
    assert parse_notes(text, finished=True) == [Note(P, "p")]


def test_truncated_drops_last_bullet():
    text = "<notes>\n- (type=insight) first fact\n- (type=insight) second fa"
    assert parse_notes(text, finished=False) == [Note(I, "first fact")]
    assert parse_notes(text, finished=True) == [Note(I, "first fact"), Note(I, "second fa")]
    # a bullet cut inside its tag is the last bullet: earlier ones survive
    text = "<notes>\n- (type=insight) first fact\n- (type=ins"
    assert parse_notes(text, finished=False) == [Note(I, "first fact")]
    # complete-looking last line is still dropped (we cannot know it ended)
    text = "<notes>\n- (type=insight) a\n- (type=pitfall) b\n"
    assert parse_notes(text, finished=False) == [Note(I, "a")]
    # with the closing tag present the block is complete
    text = "<notes>\n- (type=insight) a\n- (type=pitfall) b\n</notes> and then more"
    assert parse_notes(text, finished=False) == [Note(I, "a"), Note(P, "b")]


def test_malformed_unknown_and_empty():
    text = (
        "<notes>\n"
        "just prose, no bullet\n"
        "- no type tag here\n"
        "- (type=lemma) unknown kind\n"
        "- (type=insight)   \n"
        "- (type=insight) ok one\n"
        "- type=insight missing parens\n"
        "</notes>"
    )
    assert parse_notes(text, finished=True) == [Note(I, "ok one")]
    assert parse_notes("<notes>\n</notes>", finished=True) == []
    assert parse_notes("<notes></notes>", finished=False) == []
    assert parse_notes("", finished=True) == []


def test_wrong_tags_still_parse():
    text = "<note>\n- (type=insight) x > 0\n</note>\n- (type=insight) later"
    assert parse_notes(text, finished=True) == [Note(I, "x > 0")]
    text = "<Notes>\n- (type=pitfall) p\n</NOTES>"
    assert parse_notes(text, finished=True) == [Note(P, "p")]


def test_final_answers_rejected():
    text = (
        "<notes>\n"
        "- (type=insight) So the answer is 42\n"
        "- (type=insight) Final answer: 7\n"
        "- (type=insight) x = \\boxed{3}\n"
        "- (type=insight) Answer = 12\n"
        "- (type=insight) the answer set must contain only odd n\n"
        "</notes>"
    )
    # the last one talks about an answer set, not a final answer: kept
    assert parse_notes(text, finished=True) == [Note(I, "the answer set must contain only odd n")]


def test_length_cap_drops_long_notes():
    long = "x" * (MAX_NOTE_CHARS + 1)
    ok = "y" * MAX_NOTE_CHARS
    text = f"<notes>\n- (type=insight) {long}\n- (type=insight) {ok}\n</notes>"
    assert parse_notes(text, finished=True) == [Note(I, ok)]


def test_whitespace_and_quotes_cleaned_and_max_notes():
    text = '<notes>\n-   (type=insight)   "a   b"  \n- (type=insight) c\n</notes>'
    assert parse_notes(text, finished=True) == [Note(I, "a b"), Note(I, "c")]
    assert parse_notes(text, finished=True, max_notes=1) == [Note(I, "a b")]


def test_non_string_input():
    assert parse_notes(None, finished=True) == []  # type: ignore[arg-type]


_FRAGMENTS = st.sampled_from(
    [
        "<notes>", "</notes>", "<note>", "</", "<", ">", "- (type=insight)", "- (type=pitfall)",
        "* (type = Insight)", "- [pitfall]", "- (", "(", ")", "[", "]", "\n", " ", "type=", "\\boxed{",
        "}", "the answer is", "x", "é", "\u2022", "1.", "\r\n", "\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_parse_never_raises_on_text(text, finished):
    for n in parse_notes(text, finished):
        assert n.kind in ("insight", "pitfall") and n.text and len(n.text) <= MAX_NOTE_CHARS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5)), max_size=40), st.booleans())
def test_parse_never_raises_on_fragments(parts, finished):
    for n in parse_notes("".join(parts), finished):
        assert n.kind in ("insight", "pitfall") and n.text.strip() == n.text
