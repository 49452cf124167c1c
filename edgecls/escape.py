"""Escaping for every string edgecls writes into generated C/C++, Markdown and HTML.

Class names come from folder names and run folders from other people: a string
from them must reach a generated file as data, never as code or markup.
"""

from __future__ import annotations

import html

_MARKDOWN_SPECIAL = set("\\`*[]|~")  # what can start markup, a link or a new cell inside a table cell


def c_string(text: str) -> str:
    """`text` as a C/C++ string literal that compiles back to exactly its UTF-8 bytes.

    Printable ASCII stays readable; `"`, `\\` and `?` (trigraphs) are escaped; every other
    byte becomes a three-digit octal escape, which cannot swallow a following digit.
    """
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\?':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def c_comment(text: str) -> str:
    """`text` safe inside a `//` or `/* */` comment: one line, printable ASCII, no comment terminator."""
    printable = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)
    return printable.replace("*/", "* /").replace("\\", "/")


def escape_markdown(text: str) -> str:
    """`text` as literal Markdown table-cell text: one line, no raw HTML, no cell break, link or emphasis."""
    one_line = " ".join(str(text).split())
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in html.escape(one_line, quote=False))


def escape_html(text: str) -> str:
    """`text` as HTML text or attribute content."""
    return html.escape(str(text), quote=True)
