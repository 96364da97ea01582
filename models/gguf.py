"""Reading what a GGUF says about itself: base or instruction-tuned, and on what evidence."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

INSTRUCT_WORDS = re.compile(r"\b(instruct|chat|it|sft|dpo|rlhf|assistant)\b", re.IGNORECASE)
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<|start_header_id|>",
               "<|eot_id|>", "[INST]", "<|user|>", "<|assistant|>")


@dataclass(frozen=True)
class ModelDescription:
    name: str
    architecture: str
    has_chat_template: bool
    chat_template_first_line: str | None
    looks_instruction_tuned: bool
    evidence: list[str] = field(default_factory=list)


def describe_metadata(metadata: dict[str, str], chat_tokens_in_vocab: list[str] | None = None) -> ModelDescription:
    """Weigh `general.finetune`, the names and the chat template; chat tokens in the vocabulary are noted,
    but alone they do not make a model instruction-tuned (base Qwen and Gemma GGUFs carry them too)."""
    name = metadata.get("general.name") or metadata.get("general.basename") or "unknown"
    template = metadata.get("tokenizer.chat_template")
    evidence, instruct = [], False
    finetune = metadata.get("general.finetune")
    if finetune:
        instruct = True
        evidence.append(f"general.finetune = {finetune!r}")
    for key in ("general.name", "general.basename"):
        value = metadata.get(key) or ""
        if INSTRUCT_WORDS.search(value.replace("-", " ").replace("_", " ")):
            instruct = True
            evidence.append(f"{key} = {value!r} names an instruction/chat tune")
    if template:
        evidence.append("carries tokenizer.chat_template (reported, never used)")
    if chat_tokens_in_vocab:
        evidence.append(f"control tokens for chat turns in the vocabulary: {', '.join(chat_tokens_in_vocab)}")
    if not evidence:
        evidence.append("no fine-tune, no instruct name, no chat template")
    first_line = template.strip().splitlines()[0][:120] if template and template.strip() else None
    return ModelDescription(
        name=name, architecture=metadata.get("general.architecture", "unknown"),
        has_chat_template=bool(template), chat_template_first_line=first_line,
        looks_instruction_tuned=instruct, evidence=evidence,
    )
