"""`gristmill doctor` on Qwen2.5 GGUFs: a base model that ships a chat template is still called base, in words that
cannot be read as the opposite; the instruct tune is called instruction-tuned on its labels alone."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.models.gguf import describe_metadata
from tests.support import qwen_vocab as qv

runner = CliRunner()


@pytest.fixture(scope="module")
def qwen_variant(qwen_vocab_dir, qwen_gguf_path):
    """The verified fixture's tokenizer under other general.* metadata, built once per cache key."""
    def build(name: str, variant: qv.GgufVariant):
        return qv.cached(qwen_vocab_dir, name, lambda path: qv.build_gguf(path, variant))
    return build


def kind_block(output: str) -> list[str]:
    """The lines that explain `kind:`, up to the BOS line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  kind: "))
    end = next(i for i, line in enumerate(lines) if line.startswith("  BOS: "))
    return [line.strip() for line in lines[start + 1:end]]


def test_base_qwen_with_its_chat_template_is_reported_base(qwen_variant):
    path = qwen_variant("qwen2.5-base-with-template.gguf", qv.BASE_WITH_TEMPLATE)
    result = runner.invoke(app, ["doctor", "--model", str(path)])
    assert result.exit_code == 0, result.output
    assert "  name: Qwen2.5 32B\n" in result.output and "  architecture: qwen2\n" in result.output
    assert "  kind: base\n" in result.output
    assert "chat template: present, never used: '{%- if tools %}'" in result.output
    assert "BOS: id 151643 '<|endoftext|>', added: no (gguf: tokenizer.ggml.add_bos_token = false)" in result.output
    assert "EOS: id 151643 '<|endoftext|>'" in result.output
    block = kind_block(result.output)
    because = [line for line in block if line.startswith("because: ")]
    notes = [line for line in block if line.startswith("not decisive: ")]
    assert len(because) + len(notes) == len(block), block  # every line says which it is
    assert because == ["because: general.finetune is unset, and neither general.name = 'Qwen2.5 32B' nor "
                       "general.basename = 'Qwen2.5' names an instruction/chat tune"]
    assert any("chat template is present" in n and "never rendered" in n for n in notes)
    assert any("<|im_start|>, <|im_end|>" in n and "never fed" in n for n in notes)
    # nothing a reader could take as evidence of a tune
    assert "evidence:" not in result.output and "instruction-tuned" not in result.output
    assert "warning:" not in result.output


def test_instruct_qwen_is_reported_instruction_tuned_on_its_labels(qwen_variant):
    path = qwen_variant("qwen2.5-instruct.gguf", qv.INSTRUCT)
    result = runner.invoke(app, ["doctor", "--model", str(path)])
    assert result.exit_code == 0, result.output
    assert "  kind: instruction-tuned\n" in result.output
    assert "EOS: id 151645 '<|im_end|>'" in result.output
    block = kind_block(result.output)
    assert block[:2] == ["because: general.finetune = 'Instruct'",
                         "because: general.name = 'Qwen2.5 32B Instruct' names an instruction/chat tune"]
    assert all(line.startswith("not decisive: ") for line in block[2:]) and len(block) == 4
    warning = result.output[result.output.index("warning:"):]
    assert "base model" in warning and "general.finetune = 'Instruct'" in warning
    assert "chat template" not in warning and "<|im_start|>" not in warning  # only what decided it


def test_the_vocab_fixture_reads_as_base_without_a_template(qwen_gguf_path):
    result = runner.invoke(app, ["doctor", "--model", str(qwen_gguf_path)])
    assert result.exit_code == 0, result.output
    assert "  kind: base\n" in result.output and "chat template: none" in result.output
    assert not any("chat template" in line for line in kind_block(result.output))


@pytest.mark.parametrize("finetune, instruct", [("Instruct", True), ("chat", True), ("Base", False), ("pt", False)])
def test_finetune_label_decides_and_template_never_does(finetune, instruct):
    metadata = {"general.name": "Some Model 7B", "general.finetune": finetune,
                "tokenizer.chat_template": qv.QWEN25_CHAT_TEMPLATE}
    description = describe_metadata(metadata, ["<|im_start|>"])
    assert description.looks_instruction_tuned is instruct
    assert f"general.finetune = {finetune!r}" in description.evidence[0]
    assert instruct or description.evidence[1] == "general.name = 'Some Model 7B' names no instruction/chat tune"
    assert not any("template" in e or "<|im_start|>" in e for e in description.evidence)
    assert len(description.notes) == 2
    without = describe_metadata({k: v for k, v in metadata.items() if k != "tokenizer.chat_template"})
    assert without.looks_instruction_tuned is instruct and without.notes == []
