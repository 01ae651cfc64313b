"""The documentation holds up: every relative link and image of every markdown file resolves (anchors included), and
every command in the README's code blocks names a real tool, subcommand and options, checked against that tool's own
click or argparse parser (nothing is run)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import click
import pytest
from repo_files import REPO, read_text, repo_files

MARKDOWN = [p for p in repo_files() if p.suffix.lower() == ".md"]
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\".*\")?\s*$")
_HTML_SRC = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def split_fences(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(prose lines with fenced blocks blanked, [(info string, block lines)])."""
    prose, blocks, fence, info, body = [], [], None, "", []
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence, info, body = m.group(1), m.group(2).strip(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(
                fence[0]):
            blocks.append((info, body))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)          # links keep their text
    text = re.sub(r"[`*_]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(read_text(path) or "")
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        if m := _HEADING.match(line):
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def link_targets(path: Path) -> list[str]:
    """Every link/image target of a markdown file outside code (fenced blocks and inline code spans)."""
    prose, _ = split_fences(read_text(path) or "")
    targets = []
    for line in prose:
        line = re.sub(r"(`+)(?:(?!\1).)+?\1", "", line)                   # inline code spans
        targets += _INLINE_LINK.findall(line) + _HTML_SRC.findall(line)
        if m := _REF_LINK.match(line):
            targets.append(m.group(1))
    return targets


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in link_targets(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):     # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (REPO / path).parent / file_part if file_part else REPO / path
        dest = dest.resolve()
        if not dest.exists():
            problems.append(f"{target} (no such file)")
        elif REPO.resolve() not in (dest, *dest.parents):
            problems.append(f"{target} (outside the repository)")
        elif anchor and dest.suffix.lower() == ".md" and anchor not in anchors(dest.relative_to(REPO.resolve())):
            problems.append(f"{target} (no heading with anchor #{anchor})")
    return problems


@pytest.mark.parametrize("path", MARKDOWN, ids=str)
def test_markdown_links_resolve(path: Path) -> None:
    assert broken_links(path) == [], f"{path}: broken links"


def test_link_checker_catches_broken_links(tmp_path, monkeypatch) -> None:
    """The checker itself: a missing file, a missing anchor and a link escaping the tree are reported; links in code
    and external URLs are not."""
    import repo_files as rf
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("# Title\n## Some section: here\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "[ok](docs/A.md) [ok2](docs/A.md#some-section-here) ![img](docs/missing.png) [bad](docs/A.md#nope)\n"
        "[up](../outside.md) [web](https://example.org/x) `[code](nowhere.md)`\n```\n[x](fenced.md)\n```\n",
        encoding="utf-8")
    (tmp_path.parent / "outside.md").write_text("x", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(rf, "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "read_text", lambda p: (tmp_path / p).read_text(encoding="utf-8"))
    assert broken_links(Path("README.md")) == ["docs/missing.png (no such file)",
                                               "docs/A.md#nope (no heading with anchor #nope)",
                                               "../outside.md (outside the repository)"]


# ---------------------------------------------------------------------------------------------------------------------
# The README's commands.

SHELL_INFO = {"", "sh", "bash", "shell", "console"}
# Programs the README may name that are not this project's (each checked only for existing as a name here).
EXTERNAL = {"pip", "micromamba", "conda", "git", "cd", "export", "mkdir", "echo", "nvidia-cuda-mps-control",
            "tensorboard", "jupyter", "nvidia-smi", "sudo", "apt-get", "time", "ffmpeg"}
PYTHONS = {"python", "python3", ".venv/bin/python"}


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _load_script(rel: str):
    """Import a repository script by path (scripts/ and bench/ are not packages)."""
    path = REPO / rel
    if not path.is_file():
        raise AssertionError(f"{rel}: no such script")
    sys.path.insert(0, str(path.parent))
    try:
        name = f"_docs_{path.stem}_{abs(hash(rel))}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(path.parent))


def cli_of(script: str) -> click.Command | argparse.ArgumentParser:
    """The parser of a repository script: its click command/group, or the argparse parser its main() builds (caught
    at parse_args, before anything runs)."""
    mod = importlib.import_module(script[:-3]) if "/" not in script else _load_script(script)
    for name in ("cli", "main"):
        obj = getattr(mod, name, None)
        if isinstance(obj, click.Command):
            return obj
    main = getattr(mod, "main", None)
    if main is None:
        raise AssertionError(f"{script}: neither a click command nor a main() to read an argparse parser from")

    def capture(self, *args, **kwargs):
        raise _Parsed(self)
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        main()
    except _Parsed as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{script}: main() returned without parsing arguments")


def check_click(cmd: click.Command, args: list[str], where: str) -> None:
    """Walk `args` through a click command: subcommands exist, options exist, option values and choices fit,
    positional arguments are not too many."""
    while isinstance(cmd, click.Group):
        if not args or args[0] in ("--help", "-h"):
            return
        assert args[0] in cmd.commands, f"{where}: no subcommand '{args[0]}' (has {sorted(cmd.commands)})"
        cmd, args = cmd.commands[args[0]], args[1:]
    options = {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
    positional = [p for p in cmd.params if isinstance(p, click.Argument)]
    free = sum(p.nargs for p in positional if p.nargs > 0)
    unlimited = any(p.nargs < 0 for p in positional)
    n_pos, i = 0, 0
    while i < len(args):
        tok = args[i]
        if tok in ("--help", "-h"):
            return
        if tok.startswith("-") and tok != "-":
            name, eq, value = tok.partition("=")
            assert name in options, f"{where}: no option '{name}' (has {sorted(options)})"
            param = options[name]
            if param.is_flag or param.count:
                assert not eq, f"{where}: '{name}' is a flag and takes no value"
                i += 1
                continue
            values = [value] if eq else args[i + 1:i + 1 + param.nargs]
            assert len(values) == param.nargs and not any(v.startswith("--") for v in values), \
                f"{where}: '{name}' needs {param.nargs} value(s)"
            if isinstance(param.type, click.Choice):
                for v in values:
                    assert v in param.type.choices, f"{where}: '{name} {v}' is not one of {param.type.choices}"
            i += 1 if eq else 1 + param.nargs
        else:
            n_pos += 1
            assert unlimited or n_pos <= free, f"{where}: unexpected argument '{tok}'"
            i += 1


def check_argparse(parser: argparse.ArgumentParser, args: list[str], where: str) -> None:
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{where}: the script's parser rejects {args} (exit {exc.code})") from None


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE)) - {".PHONY"}


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a markdown file's shell code blocks: continuation lines joined, comments dropped, split at
    ';', '&&', '||' and '|'."""
    _, blocks = split_fences(text)
    commands = []
    for info, body in blocks:
        lang = info.split()[0].lower() if info else ""
        if lang not in SHELL_INFO:
            continue
        joined = re.sub(r"\\\n", " ", "\n".join(body))
        for line in joined.splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lex.whitespace_split, lex.commenters = True, "#"
            current: list[str] = []
            for tok in lex:
                if tok in (";", "&&", "||", "|", "&"):
                    commands.append(current)
                    current = []
                else:
                    current.append(tok)
            commands.append(current)
    return [c for c in commands if c]


def check_command(tokens: list[str], make: set[str]) -> None:
    where = " ".join(tokens)
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):      # FOO=bar cmd ...
        tokens = tokens[1:]
    if not tokens:                                                           # only assignments: PKL=...
        return
    prog, args = tokens[0], tokens[1:]
    if prog == "make":
        for a in args:
            assert "=" in a or a in make, f"{where}: no make target '{a}' (has {sorted(make)})"
        return
    if prog == "torchrun":
        while args and not args[0].endswith(".py"):
            args = args[1:]
        assert args, f"{where}: torchrun without a script"
        prog, args = "python", args
    if prog in PYTHONS:
        if args[:1] == ["-m"]:
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module '{args[1]}'"
            return
        script, args = args[0], args[1:]
        parser = cli_of(script)
        if isinstance(parser, click.Command):
            check_click(parser, args, where)
        else:
            check_argparse(parser, args, where)
        return
    assert prog in EXTERNAL, f"{where}: '{prog}' is neither one of this project's tools nor a known program"


def test_readme_commands_name_real_tools_and_options() -> None:
    commands = shell_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(commands) >= 10, "the README should show its commands in shell code blocks"
    make = make_targets()
    for tokens in commands:
        check_command(tokens, make)


@pytest.mark.parametrize("line, message", [
    ("python train.py --outdir runs --cfgg t4", "no option '--cfgg'"),
    ("python generate.py imagez --network PKL", "no subcommand 'imagez'"),
    ("python generate.py images --network PKL --impl fastest", "is not one of"),
    ("python dataset_tool.py info a.zip b.zip", "unexpected argument"),
    ("make tests", "no make target"),
    ("frobnicate --now", "neither one of this project's tools"),
    ("python bench/train_speed.py --no-such-flag", "parser rejects"),
])
def test_command_checker_rejects(line: str, message: str) -> None:
    (tokens,) = shell_commands(f"```\n{line}\n```\n")
    with pytest.raises(AssertionError, match=message):
        check_command(tokens, make_targets())


def test_model_md_parameter_counts_match_the_code() -> None:
    from training.networks.discriminator import Discriminator
    from training.networks.generator import Generator

    def count(m) -> str:
        return f"{sum(p.numel() for p in m.parameters()):,}"
    text = (REPO / "docs" / "MODEL.md").read_text(encoding="utf-8")
    g4, g8 = Generator(num_layers=4), Generator(num_layers=8)
    rows = {"G, 4 NeRF layers": count(g4), "G, 8 NeRF layers": count(g8), "the mapping network":
            count(g4.mapping_network), "one hidden 128 -> 128 NeRF layer": count(g4.nerf.layers[1])}
    rows |= {f"D at P = {p}": count(Discriminator(img_resolution=p)) for p in (8, 32, 64)}
    for label, n in rows.items():
        line = next((ln for ln in text.splitlines() if label in ln and ln.startswith("|")), None)
        assert line is not None and line.rstrip(" |").endswith(n), f"MODEL.md: '{label}' should be {n}"


def test_docs_folder_stays_small() -> None:
    """docs/ holds documents and what they cite (study summaries, figures), not raw run data: under 2 MB."""
    size = sum((REPO / p).stat().st_size for p in repo_files() if p.parts[0] == "docs")
    assert size < 2_000_000, f"docs/ holds {size:,} bytes; keep raw data out (reproduce.py summarize)"


README_SECTIONS = ["Install", "The two commands", "Quick start", "Recipes", "Results to expect", "Commands",
                   "Troubleshooting", "Licence", "How to cite"]


def test_readme_is_short_and_has_its_sections() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.split()) <= 2000, f"README.md has {len(text.split())} words; keep it at most 2,000"
    prose, _ = split_fences(text)
    headings = [m.group(2) for line in prose if (m := _HEADING.match(line)) and len(m.group(1)) == 2]
    missing = [s for s in README_SECTIONS if s not in headings]
    assert not missing, f"README.md lacks the sections {missing}"
    assert "@misc{kania2023hypernerfgan" in text and "{2301.11631}" in text
    assert re.search(r"!\[[^\]]+\]\([^)]+\.png\)", text), "the README opens with a picture"
