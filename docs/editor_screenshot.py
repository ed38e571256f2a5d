"""Draw the README's editor picture: Neovim's built-in LSP client running `specc lsp` on the
PyTorch MNIST example's ConvNet, captured from tmux and drawn cell by cell.

    python docs/editor_screenshot.py [-o docs/editor_shape_error.png]

Needs nvim (0.7+), tmux, Pillow and a monospace TrueType font (DejaVu Sans Mono), and
specc with the lsp extra on PATH. What it shows is live: nothing is drawn that the editor
did not put on the screen.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "tests" / "cases" / "errors" / "linear_in_features.spec"
COLUMNS, ROWS = 112, 30
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
CELL_W, CELL_H, FONT_SIZE = 13, 26, 21
FOREGROUND, BACKGROUND = (220, 220, 220), (30, 30, 30)
# The picture's look, not specc's: a dark float, the diagnostic's line under the cursor.
LOOK = """
set termguicolors
NoMatchParen
highlight Normal guifg=#dcdcdc guibg=#1e1e1e
highlight NormalFloat guifg=#f0f0f0 guibg=#3a3a3a
highlight FloatBorder guifg=#808080 guibg=#3a3a3a
highlight SignColumn guibg=#1e1e1e
highlight StatusLine guifg=#1e1e1e guibg=#b0b0b0
"""


def capture(spec: Path) -> str:
    """The tmux pane, with its colours, once the server has underlined the error and its
    float is open at the error."""
    with tempfile.TemporaryDirectory() as tmp:
        look = Path(tmp) / "look.vim"
        look.write_text(LOOK)
        target = Path(tmp) / "mnist_convnet.spec"
        shutil.copy(spec, target)
        config = ROOT / "editors" / "nvim" / "specc.lua"
        nvim = f"nvim -u {config} -c 'source {look}' {target.name}"
        tmux = ["tmux", "-L", "specc-shot"]
        subprocess.run([*tmux, "new-session", "-d", "-c", tmp, "-x", str(COLUMNS),
                        "-y", str(ROWS), nvim], check=True)  # fmt: skip
        try:
            time.sleep(12)  # start-up, import torch, the first check
            # the file's diagnostics in a float under its last line (below it, as the line is in
            # the window's upper half), so no code is hidden
            keys = ["G", ":lua vim.diagnostic.open_float({scope='buffer', border='single'})",
                    "Enter"]  # fmt: skip
            for key in [*keys, ':echo ""', "Enter"]:
                subprocess.run([*tmux, "send-keys", "-t", "0", key], check=True)
                time.sleep(0.5)
            time.sleep(1)
            out = subprocess.run([*tmux, "capture-pane", "-t", "0", "-e", "-p"],
                                 check=True, capture_output=True, text=True)  # fmt: skip
            return out.stdout
        finally:
            subprocess.run([*tmux, "kill-server"], check=False)


def _rgb(color: Color | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if color is None or color.is_default:
        return default
    return tuple(color.get_truecolor())  # type: ignore[return-value]


def _plain(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;:]*m", "", line).strip()


def _trimmed(ansi: str) -> list[str]:
    """The screen without the empty command line and the `~` rows between the text and the
    status line."""
    lines = ansi.split("\n")[:ROWS]
    while lines and not _plain(lines[-1]):
        lines.pop()
    *body, status = lines
    while body and _plain(body[-1]) in ("", "~"):
        body.pop()
    return [*body, "", status]


def draw(ansi: str, out: Path) -> None:
    """Each character in its cell, with its foreground, background and underline."""
    font = ImageFont.truetype(FONT, FONT_SIZE)
    pad = 16
    lines = _trimmed(ansi)
    size = (COLUMNS * CELL_W + 2 * pad, len(lines) * CELL_H + 2 * pad)
    image = Image.new("RGB", size, BACKGROUND)
    pen = ImageDraw.Draw(image)
    console = Console(width=COLUMNS, color_system="truecolor", file=io.StringIO())
    for row, line in enumerate(lines):
        col = 0
        # rich reads no underline colour (SGR 58), and would take its numbers for others
        for segment in Text.from_ansi(re.sub(r"\x1b\[58[;:][0-9;:]*m", "", line)).render(console):
            style = segment.style or Style()
            fg, bg = _rgb(style.color, FOREGROUND), _rgb(style.bgcolor, BACKGROUND)
            if style.reverse:
                fg, bg = bg, fg
            for char in segment.text:
                x, y = pad + col * CELL_W, pad + row * CELL_H
                pen.rectangle((x, y, x + CELL_W - 1, y + CELL_H - 1), fill=bg)
                pen.text((x, y + 2), char, font=font, fill=fg)
                if style.underline:
                    pen.line((x, y + CELL_H - 3, x + CELL_W, y + CELL_H - 3), fill=(230, 80, 80))
                col += 1
    image.save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-o", "--output", type=Path, default=ROOT / "docs" / "editor_shape_error.png"
    )
    args = parser.parse_args()
    draw(capture(SPEC), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
