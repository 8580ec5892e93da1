"""Untrusted text (asset names, members, messages that quote them, API errors) made inert in each output.

Names come from the organization and its clusters: a Kubernetes subject, a label or a resource name can hold
anything. In Markdown they must not become HTML, links or formatting, nor break out of a code span, a table cell or
a fenced block; on a terminal they must not carry escape sequences (colours, cursor moves, window titles,
hyperlinks) or bidirectional overrides that reorder what is shown. HTML output is escaped by its autoescaping
templates; `html` is here for the places that build HTML by hand.
"""

from __future__ import annotations

import re

from markupsafe import escape as _html_escape

# C0 and C1 controls, DEL, and the Unicode bidirectional embeddings, overrides and isolates ("Trojan Source").
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# ASCII punctuation that Markdown (CommonMark and GitHub's tables) gives a meaning to inside a line: code, emphasis,
# links and images (no "[", no link), cell separators, strikethrough. "<" and "&" become entities (no HTML).
_MD_PUNCT = re.compile(r"([\\`*_\[\]|~])")
# What makes a block of the start of a line: a heading, a list item, a quote, a setext underline.
_MD_BLOCK_START = re.compile(r"^(\s*)([#+\-=]|\d+(?=[.)]))")
_TICKS = re.compile(r"`+")


def plain(text: object) -> str:
    """One line of printable text: every control character (ANSI escapes start with one) becomes a space,
    except that an escape sequence is dropped whole."""
    s = str(text)
    s = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]", "", s)  # CSI, OSC, Fe
    return _CONTROLS.sub(" ", s)


def plain_lines(text: object) -> str:
    """`plain` line by line: the line breaks stay (the content of a fenced block, a command on several lines)."""
    return "\n".join(plain(line) for line in str(text).split("\n"))


def md_text(text: object) -> str:
    """Text shown as text in Markdown (a table cell, a list item, a paragraph): no HTML, no link, no emphasis."""
    s = plain(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # also: "&gt;" starts no quote
    s = _MD_PUNCT.sub(r"\\\1", s)
    m = _MD_BLOCK_START.match(s)
    if m:  # "# x" is no heading, "- x" and "1. x" no list item, "===" no underline: escape the marker
        s = m[1] + (m[2] + "\\" if m[2][0].isdigit() else "\\" + m[2]) + s[m.end():]
    return s


def md_code(text: object, in_table: bool = True) -> str:
    """A code span holding `text` as is: its fence is longer than any run of backticks inside (CommonMark), and in a
    table cell a pipe is escaped (GitHub's tables split cells on it even inside code)."""
    s = plain(text)
    longest = max((len(m) for m in _TICKS.findall(s)), default=0)
    fence = "`" * (longest + 1)
    if s.startswith("`") or s.endswith("`") or (s.startswith(" ") and s.endswith(" ") and s.strip()):
        s = f" {s} "  # one space each side is stripped by the reader, so a backtick at the edge stays content
    if in_table:
        s = s.replace("|", "\\|")
    return f"{fence}{s}{fence}"


def md_fence(*texts: object) -> str:
    """The opening (and closing) line of a fenced code block that none of `texts`' lines can close: backticks,
    at least three, more than any run of them in the content."""
    longest = max((len(m) for t in texts for m in _TICKS.findall(str(t))), default=0)
    return "`" * max(3, longest + 1)


def html(text: object) -> str:
    return str(_html_escape(str(text)))
