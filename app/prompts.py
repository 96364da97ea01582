"""Prompt styles: plain text for a base model to continue. The rendered text is exactly what is fed and stored.

Templates are filled in one pass by a regular expression over the *template*, so instruction text
containing `{examples}`, braces, backslashes or markup is inserted literally and never re-read.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path

from gristmill.app.tomlfile import read_toml

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]+)\}")
BUILTIN_STYLES = ("completion", "few-shot", "urial")
DEFAULT_TRAINING_FORMAT = "Instruction: {instruction}\n{input_block}Response: {response}"
DEFAULT_TRAINING_INPUT = "Input: {input}\n"
STYLE_KEYS = {
    "name",
    "description",
    "draws",
    "template",
    "frames",
    "input_format",
    "example_format",
    "examples",
    "pool_file",
    "shots",
    "stop",
    "training_format",
    "training_input_format",
}
EXAMPLE_KEYS = {"id", "type", "instruction", "input", "response"}


class StyleError(ValueError):
    """A style file is wrong; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class Example:
    id: str
    instruction: str
    response: str
    input: str = ""
    type: str = "general"


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    stop: tuple[str, ...]
    meta: dict = field(default_factory=dict)  # e.g. the few-shot example ids, in order


@dataclass(frozen=True)
class Style:
    name: str
    description: str = ""
    template: str | None = None  # with {examples}, {instruction}, {input_block}, {input}
    frames: dict[str, str] = field(default_factory=dict)  # per instruction type; "general" is the fallback
    input_format: str = "Input: {input}\n"
    example_format: str = "Instruction: {instruction}\n{input_block}Response: {response}\n\n"
    examples: tuple[Example, ...] = ()
    shots: tuple[int, int] = (3, 4)
    stop: tuple[str, ...] = ()
    training_format: str = DEFAULT_TRAINING_FORMAT
    training_input_format: str = DEFAULT_TRAINING_INPUT
    draws: int = 0  # 0: every item draws its own examples; N: the run uses at most N distinct draws
    source: str = "built-in"
    run_seed: int = field(default=0, compare=False)  # not content: bound per run (for_run) to seed shared draws

    def for_run(self, run_seed: int) -> Style:
        """This style bound to a run's seed: shared draws (`draws`) are seeded from it and the draw number."""
        return replace(self, run_seed=run_seed)

    @property
    def draws_examples(self) -> bool:
        return "{examples}" in (self.template or "") and bool(self.examples) and self.shots[1] > 0

    def render(
        self,
        instruction: str,
        input_text: str = "",
        instruction_type: str = "general",
        *,
        seed: int = 0,
        extra_examples: Sequence[Example] = (),
    ) -> RenderedPrompt:
        input_block = fill(self.input_format, {"input": input_text}) if input_text else ""
        values = {"instruction": instruction, "input": input_text, "input_block": input_block, "type": instruction_type}
        meta: dict = {}
        if self.template is not None:
            template = self.template
            if "{examples}" in template:
                if self.draws:
                    meta["draw"] = self.draw_number(seed)
                chosen = self.draw(seed, extra_examples)
                meta["examples"] = [e.id for e in chosen]
                values["examples"] = "".join(self.format_example(e) for e in chosen)
        else:
            frame_type = instruction_type if instruction_type in self.frames else "general"
            template = self.frames[frame_type]
            meta["frame"] = frame_type
        return RenderedPrompt(fill(template, values), self.stop, meta)

    def draw_number(self, seed: int) -> int:
        """Which of the run's `draws` shared draws an item gets: a function of the item's own seed only, so it
        never depends on the order, the batch size or the process that renders the item."""
        return seed % self.draws

    def draw(self, seed: int, extra_examples: Sequence[Example] = ()) -> list[Example]:
        """3-4 examples chosen and ordered by a seeded generator: reproducible per item.

        Without `draws` the generator is seeded with the item's seed, so every item has its own draw and
        prompts share only the header. With `draws = N` it is seeded with the run seed and the item's draw
        number, so items with the same number get the same examples in the same order: the shared prefix
        an engine evaluates once (fewer distinct example sets in the run, chosen by the user).
        """
        pool = list(self.examples) + list(extra_examples)
        rng = random.Random(draw_seed(self.run_seed, self.draw_number(seed)) if self.draws else seed)
        low, high = self.shots
        k = min(rng.randint(low, high), len(pool))
        return rng.sample(pool, k)

    def format_example(self, example: Example) -> str:
        block = fill(self.input_format, {"input": example.input}) if example.input else ""
        return fill(
            self.example_format,
            {
                "instruction": example.instruction,
                "input": example.input,
                "input_block": block,
                "response": example.response,
                "type": example.type,
            },
        )

    def training_text(self, instruction: str, input_text: str, response: str) -> str:
        """`formatted_text` for export: the training format, not the generation prompt."""
        block = fill(self.training_input_format, {"input": input_text}) if input_text else ""
        return fill(
            self.training_format,
            {"instruction": instruction, "input": input_text, "input_block": block, "response": response},
        )


def style_to_json(style: Style) -> str:
    """The style's whole content as canonical JSON: what a run stores, so it never depends on a file again."""
    data = asdict(style)
    data.pop("source")
    data.pop("run_seed")
    if not data["draws"]:  # absent when off, so a style without the key keeps the digest it always had
        data.pop("draws")
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def style_from_json(text: str, source: str = "stored on run") -> Style:
    """Rebuild a style from `style_to_json` output (the inverse, up to `source` and the bound `run_seed`)."""
    data = json.loads(text)
    data["examples"] = tuple(Example(**e) for e in data.get("examples", ()))
    data["shots"] = tuple(data.get("shots", (3, 4)))
    data["stop"] = tuple(data.get("stop", ()))
    return Style(**data, source=source)


def style_digest(style: Style) -> str:
    """A style's identity is its content: `s.toml`, `./s.toml` and its absolute path are one style."""
    return hashlib.sha256(style_to_json(style).encode("utf-8")).hexdigest()


def fill(template: str, values: dict[str, str]) -> str:
    """Replace {name} placeholders in one pass; `{{` and `}}` are literal braces. Values are never re-scanned."""

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return values.get(match.group(1), token)

    return PLACEHOLDER.sub(replace, template)


def placeholders(template: str) -> set[str]:
    return {m.group(1) for m in PLACEHOLDER.finditer(template) if m.group(1)}


# --- loading -------------------------------------------------------------------------------------


def _builtin_dir() -> Path:
    return Path(str(files("gristmill.app.styles")))


def load_style(name_or_path: str) -> Style:
    """A built-in style by name, or a user's TOML file by path."""
    if name_or_path in BUILTIN_STYLES:
        return _load_file(_builtin_dir() / f"{name_or_path}.toml", "built-in")
    if not name_or_path.strip():  # Path('') is the current directory
        raise StyleError(f"no style named (an empty name): use one of {', '.join(BUILTIN_STYLES)} or a .toml file")
    path = Path(name_or_path)
    if path.is_dir():
        raise StyleError(f"{path}: is a directory, not a style file")
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise StyleError(f"{path}: style file not found")
        return _load_file(path, str(path))
    raise StyleError(f"unknown style {name_or_path!r}: use one of {', '.join(BUILTIN_STYLES)} or a .toml file")


def load_style_for_pool(name_or_path: str, pool: str) -> Style:
    """`load_style`, and a style that could never draw the examples its `shots` asks for is an error: with the
    built-in pool only, a draw would quietly take fewer (with `accepted`, accepted records fill the pool)."""
    style = load_style(name_or_path)
    low = style.shots[0]
    if pool == "builtin" and style.draws_examples and len(style.examples) < low:
        raise StyleError(
            f"{style.source}: key 'shots': at least {low} examples a prompt, but the style has "
            f"{len(style.examples)} (add examples, lower shots, or draw accepted records too: --pool accepted)"
        )
    return style


def list_styles(extra_dirs: Sequence[Path] = ()) -> tuple[list[Style], list[str]]:
    """The built-in styles and the style files in `extra_dirs`, and why each file that does not load fails (a
    typo in a style file must not just make it vanish from the list)."""
    styles, broken = [load_style(name) for name in BUILTIN_STYLES], []
    for directory in extra_dirs:
        for path in sorted(Path(directory).glob("*.toml")):
            if path.name != "gristmill.toml":
                try:
                    if not set(read_toml(path, StyleError)) & STYLE_KEYS:
                        continue  # pyproject.toml, ruff.toml: another tool's file, not a broken style
                    styles.append(load_style(str(path)))
                except StyleError as error:
                    broken.append(str(error))
    return styles, broken


def _load_file(path: Path, source: str) -> Style:
    data = read_toml(path, StyleError)
    where = f"{path}"

    def expect(key: str, kind: type, default=None):
        value = data.get(key, default)
        if value is not None and not isinstance(value, kind):
            raise StyleError(f"{where}: key '{key}': expected {kind.__name__}, got {type(value).__name__}")
        return value

    unknown = sorted(set(data) - STYLE_KEYS)
    if unknown:
        raise StyleError(f"{where}: key '{unknown[0]}': unknown (known keys: {', '.join(sorted(STYLE_KEYS))})")
    template = expect("template", str)
    frames = expect("frames", dict, {})
    if template is None and not frames:
        raise StyleError(f"{where}: key 'template': missing (a style needs a template or [frames])")
    if template is not None and frames:  # the template would win and the frames be ignored without a word
        raise StyleError(f"{where}: keys 'template' and 'frames': give one or the other, not both")
    if frames and "general" not in frames:
        raise StyleError(f"{where}: key 'frames.general': missing (the fallback frame for other types)")
    for frame_type, frame in frames.items():
        if not isinstance(frame, str):
            raise StyleError(f"{where}: key 'frames.{frame_type}': expected text")
        _check_placeholders(where, f"frames.{frame_type}", frame, {"instruction", "input", "input_block", "type"})
        if "{instruction}" not in frame:
            raise StyleError(f"{where}: key 'frames.{frame_type}': must contain {{instruction}}")
    if template is not None:
        _check_placeholders(where, "template", template, {"instruction", "input", "input_block", "examples", "type"})
        if "{instruction}" not in template:
            raise StyleError(f"{where}: key 'template': must contain {{instruction}}")
    stop = expect("stop", list, [])
    if not all(isinstance(s, str) and s for s in stop):
        raise StyleError(f"{where}: key 'stop': expected a list of non-empty strings")
    draws = data.get("draws", 0)
    if "draws" in data and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
        raise StyleError(
            f"{where}: key 'draws': expected a whole number >= 1, got {draws!r} (leave the key out for a draw per item)"
        )
    if draws and not (template and "{examples}" in template):
        raise StyleError(f"{where}: key 'draws': the template has no {{examples}} to draw")
    shots = expect("shots", list, [3, 4])
    if len(shots) != 2 or not all(isinstance(n, int) and n >= 0 for n in shots) or shots[0] > shots[1]:
        raise StyleError(f"{where}: key 'shots': expected [low, high] with 0 <= low <= high")
    examples = [
        _example(where, f"examples[{n}]", e, f"{path.stem}-examples[{n}]")
        for n, e in enumerate(expect("examples", list, []))
    ]
    pool_file = expect("pool_file", str)
    if pool_file:
        try:
            examples += load_pool(path.parent / pool_file)
        except StyleError as error:
            raise StyleError(f"{where}: key 'pool_file': {error}") from None
    if template and "{examples}" in template:
        if not examples:
            raise StyleError(f"{where}: key 'examples': the template uses {{examples}} but no examples or pool_file")
    fields_ = {
        k: expect(k, str)
        for k in ("description", "input_format", "example_format", "training_format", "training_input_format")
    }
    for key in ("input_format", "training_input_format"):
        if fields_[key] is not None:
            _check_placeholders(where, key, fields_[key], {"input"})
    for key, allowed in (
        ("example_format", {"instruction", "input", "input_block", "response", "type"}),
        ("training_format", {"instruction", "input", "input_block", "response"}),  # a record's text has no type
    ):
        if fields_[key] is not None:
            _check_placeholders(where, key, fields_[key], allowed)
            for needed in ("instruction", "response"):  # without them, examples or training records lose that text
                if f"{{{needed}}}" not in fields_[key]:
                    raise StyleError(f"{where}: key '{key}': must contain {{{needed}}}")
    name = expect("name", str) or path.stem
    return Style(
        name=name,
        template=template,
        frames=dict(frames),
        examples=tuple(examples),
        shots=(shots[0], shots[1]),
        stop=tuple(stop),
        draws=draws,
        source=source,
        **{k: v for k, v in fields_.items() if v is not None},
    )


def _check_placeholders(where: str, key: str, text: str, allowed: set[str]) -> None:
    use = f"use {', '.join('{' + a + '}' for a in sorted(allowed))}; write {{{{ or }}}} for a literal brace"
    unknown = sorted(placeholders(text) - allowed)
    if unknown:
        raise StyleError(f"{where}: key '{key}': unknown placeholder {{{unknown[0]}}} ({use})")
    names = "|".join(sorted(allowed))
    unclosed = re.search(rf"\{{(?:{names})(?![A-Za-z_}}])", PLACEHOLDER.sub(lambda m: " " * len(m.group(0)), text))
    if unclosed:  # `{instruction` would be fed as written, never filled; a JSON or code brace is text as typed
        raise StyleError(
            f"{where}: key '{key}': {unclosed.group(0)!r} at character {unclosed.start() + 1} is a placeholder "
            f"left open ({use})"
        )


def _example(where: str, key: str, value: object, default_id: str) -> Example:
    if not isinstance(value, dict):
        raise StyleError(f"{where}: key '{key}': expected a table")
    unknown = sorted(set(value) - EXAMPLE_KEYS)
    if unknown:
        raise StyleError(f"{where}: key '{key}.{unknown[0]}': unknown")
    for required in ("instruction", "response"):
        if not isinstance(value.get(required), str) or not value[required].strip():
            raise StyleError(f"{where}: key '{key}.{required}': missing or not text")
    for optional in ("id", "input", "type"):  # null is absent (exported datasets write "input": null)
        given = value.get(optional)
        if given is not None and not isinstance(given, str) and not (optional == "id" and type(given) is int):
            raise StyleError(f"{where}: key '{key}.{optional}': expected text, got {type(given).__name__}")
    return Example(
        id=str(value.get("id") or default_id),
        instruction=value["instruction"],
        response=value["response"],
        input=value.get("input") or "",
        type=value.get("type") or "general",
    )


def load_pool(path: Path) -> list[Example]:
    """A JSONL pool of example pairs (`id`, `type`, `instruction`, `input`, `response`)."""
    examples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise StyleError(f"{path}: cannot read pool: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise StyleError(f"{path}: cannot read pool: not UTF-8 text (byte {error.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise StyleError(f"{path}:{number}: invalid JSON: {error.msg}") from None
        # a row without an id gets `<pool>-example`, as it always has: the id is part of the style's content,
        # so of its runs' identity, and another default would make every such run start again from scratch
        examples.append(_example(f"{path}:{number}", "example", value, f"{path.stem}-example"))
    return examples


def item_seed(run_seed: int, content_hash: str, sample_index: int) -> int:
    """Each (instruction, sample) gets its own seed from the run seed: reproducible, and different per item."""
    digest = hashlib.sha256(f"{run_seed}:{content_hash}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def draw_seed(run_seed: int, number: int) -> int:
    """The seed of shared draw `number` in a run: from the run seed and the number, nothing else."""
    digest = hashlib.sha256(f"{run_seed}:draw:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


ExampleSource = Callable[[str], Sequence[Example]]  # instruction type -> extra examples (e.g. accepted records)
