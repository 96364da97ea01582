"""Prompt styles: golden renders, seeded few-shot draws, hostile text, user TOML styles, preview."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.prompts import load_style_for_pool, StyleError, item_seed, load_style, style_digest, style_from_json, style_to_json
from tests.conftest import write

GOLDEN = Path(__file__).parent / "golden" / "styles"
runner = CliRunner()


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GRISTMILL_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


@pytest.mark.parametrize("style", ["completion", "few-shot", "urial"])
@pytest.mark.parametrize("with_input", [False, True])
def test_builtin_styles_match_golden_files(style, with_input):
    rendered = load_style(style).render("Summarize the text.", "Cats sleep a lot." if with_input else "",
                                        "rewrite", seed=42)
    golden(f"{style}-{'input' if with_input else 'plain'}.txt",
           rendered.text + "\n---stop---\n" + "\n".join(map(repr, rendered.stop)) + f"\n---meta---\n{rendered.meta}\n")


def test_completion_has_a_frame_per_type_and_a_fallback():
    style = load_style("completion")
    for kind in ("question", "explanation", "math", "creative", "fact", "list", "sentence_completion",
                 "classification", "rewrite", "general"):
        assert kind in style.frames
    assert style.render("Why?", "", "question").text == "Q: Why?\nA:"
    assert style.render("Do", "", "brainstorming").meta == {"frame": "general"}


def test_few_shot_draw_is_reproducible_and_differs_across_items():
    style = load_style("few-shot")
    assert len(style.examples) >= 30
    draws = []
    for n in range(100):
        seed = item_seed(7, f"hash-{n}", 0)
        first = style.render(f"Item {n}", seed=seed)
        assert style.render(f"Item {n}", seed=seed) == first
        assert 3 <= len(first.meta["examples"]) <= 4
        draws.append(tuple(first.meta["examples"]))
    assert len(set(draws)) >= 90


@pytest.mark.parametrize("style", ["completion", "few-shot", "urial"])
def test_hostile_instruction_text_round_trips_literally(style):
    hostile = "Use {examples} and {instruction} and {{x}} \\n [bold]b[/] <|im_start|> %s {0}"
    rendered = load_style(style).render(hostile, "{input} too", "general", seed=3)
    assert hostile in rendered.text and "{input} too" in rendered.text


def test_training_format_default():
    style = load_style("completion")
    assert style.training_text("Do X", "", "Done") == "Instruction: Do X\nResponse: Done"
    assert style.training_text("Do X", "ctx", "Done") == "Instruction: Do X\nInput: ctx\nResponse: Done"


def test_user_toml_style(tmp_path):
    write(tmp_path / "pool.jsonl", '{"id": "p1", "instruction": "2+2?", "response": "4"}\n'
                                   '{"id": "p2", "instruction": "Capital of Peru?", "response": "Lima"}\n')
    path = write(tmp_path / "mine.toml", '''
name = "mine"
template = "{examples}>> {instruction}\\n{input_block}<< "
example_format = ">> {instruction}\\n<< {response}\\n"
input_format = "({input})\\n"
pool_file = "pool.jsonl"
shots = [2, 2]
stop = ["\\n>>"]
training_format = "### {instruction}\\n{input_block}{response}"
''')
    style = load_style(str(path))
    rendered = style.render("3+3?", "math", seed=1)
    assert rendered.text.endswith(">> 3+3?\n(math)\n<< ") and rendered.stop == ("\n>>",)
    assert sorted(rendered.meta["examples"]) == ["p1", "p2"]
    assert style.training_text("a", "", "b") == "### a\nb"


@pytest.mark.parametrize("body, message", [
    ('template = "x"\ncolour = 1\n', "key 'colour': unknown"),
    ('stop = ["a"]\n', "key 'template': missing"),
    ('template = "{instruction} {oops}"\n', "key 'template': unknown placeholder {oops}"),
    ('template = "no placeholder"\n', "must contain {instruction}"),
    ('template = "{instruction}"\nstop = "x"\n', "key 'stop': expected list"),
    ('[frames]\nquestion = "Q: {instruction}"\n', "key 'frames.general': missing"),
    ('template = "{examples}{instruction}"\n', "key 'examples'"),
    ('template = "{instruction}"\nshots = [4, 2]\n', "key 'shots'"),
    ('template = = "x"\n', "invalid TOML"),
    # each of these had loaded, and the examples or exported records silently lacked the text
    ('template = "{instruction}"\ntraining_format = "Instruction: {instruction}\\nResponse:"\n',
     "key 'training_format': must contain {response}"),
    ('template = "{instruction}"\nexample_format = "Q: {response}"\n', "key 'example_format': must contain {instruction}"),
    ('[frames]\ngeneral = "Answer:"\n', "key 'frames.general': must contain {instruction}"),
    ('template = "Q: {instruction\\nA:"\n', "key 'template': '{instruction' at character 4 is a placeholder left open"),
    ('template = "{instruction}"\ninput_format = "{input} {instruction}"\n', "key 'input_format': unknown placeholder"),
    ('template = "{examples}{instruction}"\nshots = [1, 1]\n[[examples]]\ninstruction = "a"\nresponse = "b"\ntype = 5\n',
     "key 'examples[0].type': expected text, got int"),
    ('template = "{examples}{instruction}"\npool_file = "nowhere.jsonl"\n', "key 'pool_file': "),
    # with a template the frames had been ignored without a word (and still counted in the run's identity)
    ('template = "T: {instruction}"\n[frames]\ngeneral = "G: {instruction}"\n',
     "keys 'template' and 'frames': give one or the other, not both"),
    # a training record's text has no type: {type} had been exported as the literal text "{type}"
    ('template = "{instruction}"\ntraining_format = "{type}: {instruction} {response}"\n',
     "key 'training_format': unknown placeholder {type}"),
])
def test_style_file_errors_name_file_and_key(tmp_path, body, message):
    path = write(tmp_path / "bad.toml", body)
    with pytest.raises(StyleError) as error:
        load_style(str(path))
    assert str(path) in str(error.value) and message in str(error.value)


def test_preview_prints_exactly_what_is_fed(gemma_path):
    result = runner.invoke(app, ["preview", "--style", "completion", "--type", "question", "--ids",
                                 "What is {examples}?"])
    assert result.exit_code == 0, result.output
    assert "Q: What is {examples}?\nA:\n--- end of prompt ---" in result.output
    assert "tokens: " in result.output and "ids: [2, " in result.output and '"\\nQ:"' in result.output


def test_preview_of_an_item_shows_what_generate_fed_each_sample(tmp_path, gemma_path):
    """preview took --seed as the item's seed (default 0), so its few-shot draw was one no sample ever got."""
    import sqlite3

    write(tmp_path / "i.jsonl", '{"instruction": "Name a river."}\n{"instruction": "Why is ice slippery?"}\n')
    assert runner.invoke(app, ["add", str(tmp_path / "i.jsonl")]).exit_code == 0
    result = runner.invoke(app, ["generate", "--style", "few-shot", "--samples", "2", "--seed", "7",
                                 "--max-tokens", "1", "--stop", "ZZZ", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = sqlite3.connect(tmp_path / "test.db").execute(
        "SELECT instruction_id, sample_index, prompt, prompt_tokens, prompt_token_ids_sha256 FROM generations").fetchall()
    assert len({r[2] for r in rows}) == 4  # four draws: the check below tells them apart
    for instruction_id, k, prompt, tokens, digest in rows:
        for how in (["--style", "few-shot", "--seed", "7"], ["--run", "1"]):
            shown = runner.invoke(app, ["preview", "--item", str(instruction_id), "--sample", str(k + 1), *how])
            assert shown.exit_code == 0, shown.output
            assert f"exactly as fed) ---\n{prompt}\n--- end of prompt ---" in shown.output, how
            assert f"tokens: {tokens} " in shown.output and digest in shown.output
            assert ('"ZZZ"' in shown.output) == (how == ["--run", "1"])  # the run's own stops, with --run
    typed = runner.invoke(app, ["preview", "--style", "few-shot", "--seed", "7", "--sample", "2", "Why is ice slippery?"])
    assert f"---\n{rows[3][2]}\n---" in typed.output.replace(" exactly as fed) ---", "---").replace(
        "--- end of prompt ---", "---")  # text typed in: the same draw as the stored instruction's
    assert runner.invoke(app, ["preview", "--item", "1", "--run", "1", "--sample", "3"]).exit_code == 2


def test_styles_lists_builtins_and_local_files(tmp_path):
    write(tmp_path / "local.toml", 'name = "local"\ntemplate = "{instruction}"\n')
    result = runner.invoke(app, ["styles"])
    assert result.exit_code == 0
    for name in ("completion", "few-shot", "urial", "local"):
        assert name in result.output


def test_styles_names_the_files_that_do_not_load_and_why(tmp_path):
    """A typo in a style file had made it vanish from the list, with exit 0 and no word."""
    write(tmp_path / "good.toml", 'name = "good"\ntemplate = "{instruction}"\n')
    write(tmp_path / "typo.toml", 'name = "typo"\ntemplat = "{instruction}"\n')
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')  # another tool's file: not a style at all
    result = runner.invoke(app, ["styles"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "good" in text and "not loaded: " in text and "typo.toml: key 'templat': unknown" in text
    assert "1 style file(s) in" in text and "pyproject" not in text


def test_a_style_with_fewer_examples_than_shots_is_refused_unless_accepted_records_fill_the_pool(tmp_path):
    """A draw had quietly taken fewer examples than `shots` asks for."""
    body = 'template = "{examples}{instruction}"\nshots = [3, 4]\n[[examples]]\ninstruction = "a"\nresponse = "b"\n'
    path = write(tmp_path / "few.toml", body)
    result = runner.invoke(app, ["generate", "--style", str(path)])
    assert result.exit_code == 2
    assert "few.toml: key 'shots': at least 3 examples a prompt, but the style has 1" in " ".join(result.output.split())
    assert load_style_for_pool(str(path), "accepted").shots == (3, 4)


def test_pool_rows_as_exported_datasets_write_them_load_and_keep_the_ids_runs_were_made_with(tmp_path):
    """A null input and a numeric id load (an id is text); a row without an id keeps `<pool>-example`, the id it
    always had: ids are part of a style's content, so of its runs' identity, and a new default would make a
    half-done run start again. JSON and code braces in a template are text as typed."""
    write(tmp_path / "pool.jsonl", '{"instruction": "a", "response": "b", "input": null}\n\n'
                                   '{"instruction": "c", "response": "d", "id": 7}\n{"instruction": "e", "response": "f"}\n')
    path = write(tmp_path / "s.toml", 'template = "{examples}Input: {\\"task\\": \\"{instruction}\\"} {\\n"\n'
                                      'shots = [2, 2]\npool_file = "pool.jsonl"\n')
    style = load_style(str(path))
    assert [(e.id, e.input) for e in style.examples] == [("pool-example", ""), ("7", ""), ("pool-example", "")]
    assert style.render("x").text.endswith('Input: {"task": "x"} {\n')



def test_styles_shows_a_name_with_markup_as_written(tmp_path):
    write(tmp_path / "evil.toml", 'name = "[bold red]evil[/bold red] [/x]"\ntemplate = "{instruction}"\n')
    result = runner.invoke(app, ["styles"])
    assert result.exit_code == 0, result.output
    assert "[bold red]evil[/bold red] [/x]" in result.output


def test_bad_style_is_exit_2(tmp_path):
    result = runner.invoke(app, ["generate", "--style", str(write(tmp_path / "b.toml", "x = 1\n"))])
    assert result.exit_code == 2 and "key 'x': unknown" in result.output


@pytest.mark.parametrize("name", ["completion", "few-shot", "urial"])
def test_stored_style_content_renders_what_the_file_did(name):
    """A run keeps its style as content: rebuilt from JSON, it renders and trains exactly as the file did."""
    style = load_style(name)
    stored = style_from_json(style_to_json(style))
    for seed in range(5):
        assert stored.render("Explain {examples} tides.", "ctx", "explanation", seed=seed) == style.render(
            "Explain {examples} tides.", "ctx", "explanation", seed=seed)
    assert stored.training_text("q", "i", "a") == style.training_text("q", "i", "a")
    assert style_digest(stored) == style_digest(style)


def test_style_identity_is_its_content_not_its_path(tmp_path):
    path = write(tmp_path / "s.toml", 'template = "Q: {instruction}\\nA:"\nstop = ["\\nQ:"]\n')
    digests = {style_digest(load_style(p)) for p in ("s.toml", "./s.toml", str(path.resolve()))}
    assert len(digests) == 1
    path.write_text('template = "Q: {instruction}\\nAnswer:"\n', encoding="utf-8")
    assert style_digest(load_style("s.toml")) not in digests
